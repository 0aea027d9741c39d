"""What a signed-in phone (or an anonymous one) may NOT do through PostgREST, one statement
each, as PostgREST runs it: its own transaction, `SET LOCAL ROLE`, the token's claims.

Each statement runs twice: with the grants the migration leaves, and with Supabase's
default grants put back (ALL on every public table to anon and authenticated), so the
policies and triggers alone are shown to hold. Each is refused in a specific way (an
error, or no row touched or seen, as RLS does) and leaves every table as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import asyncpg
import pytest

from tests.db import connected
from tests.db.rls_world import ALICE, BOB, CAROL, IDS, seed, snapshot
from tests.support.postgrest import request

RLS = "row-level security"
NO_GRANT = "permission denied for table"


@dataclass(frozen=True)
class Refused:
    """How a statement is refused: "hidden" (runs, touches or sees no row) or "denied"
    (SQLSTATE 42501, its message matching `match`), or "check" (a CHECK constraint)."""

    how: str
    match: str = ""


HIDDEN = Refused("hidden")


@dataclass(frozen=True)
class Case:
    id: str
    sql: str
    supabase_grants: Refused  # with ALL granted: the policies and triggers alone
    migrated_grants: Refused | None = None  # when the migration's grants refuse it first
    role: str = "authenticated"
    sub: str | None = ALICE


def denied(match: str = RLS) -> Refused:
    return Refused("denied", match)


A_PRIV, A_PUB = IDS["alice_private"], IDS["alice_public"]
B_PRIV, B_PUB, B_DEL = IDS["bob_private"], IDS["bob_public"], IDS["bob_deleted_public"]

CASES = [
    # users
    Case("read_other_user", f"SELECT * FROM users WHERE id = '{BOB}'", HIDDEN),
    Case("update_other_user", f"UPDATE users SET email = 'x@x.test' WHERE id = '{BOB}'", HIDDEN),
    Case("lower_other_users_credits", f"UPDATE users SET credits = 0 WHERE id = '{BOB}'", HIDDEN),
    Case("delete_own_user", f"DELETE FROM users WHERE id = '{ALICE}'", HIDDEN, denied(NO_GRANT)),
    Case(
        "raise_own_credits",
        f"UPDATE users SET credits = credits + 1 WHERE id = '{ALICE}'",
        denied("users_credits_client_no_raise"),
    ),
    Case(
        "set_own_credits_to_a_million",
        f"UPDATE users SET credits = 1000000 WHERE id = '{ALICE}'",
        denied("users_credits_client_no_raise"),
    ),
    Case(
        "own_credits_below_zero",
        f"UPDATE users SET credits = credits - 6 WHERE id = '{ALICE}'",
        Refused("check", "users_credits_nonnegative"),
    ),
    Case(
        "insert_own_user_with_1000_credits",
        f"INSERT INTO users (id, email, credits) VALUES ('{CAROL}', 'c@x.test', 1000)",
        denied(),
        sub=CAROL,
    ),
    Case(
        "insert_own_user_with_6_credits",
        f"INSERT INTO users (id, email, credits) VALUES ('{CAROL}', 'c@x.test', 6)",
        denied(),
        sub=CAROL,
    ),
    Case(
        "insert_someone_elses_user",
        "INSERT INTO users (id, email, credits) VALUES ('user_rls_dave', 'd@x.test', 5)",
        denied(),
        sub=CAROL,
    ),
    Case(
        "move_own_user_to_another_id",
        f"UPDATE users SET id = 'user_rls_mallory' WHERE id = '{ALICE}'",
        denied(),
    ),
    # generated_images
    Case(
        "read_other_private_image", f"SELECT * FROM generated_images WHERE id = '{B_PRIV}'", HIDDEN
    ),
    Case(
        "read_other_deleted_public_image",
        f"SELECT * FROM generated_images WHERE id = '{B_DEL}'",
        HIDDEN,
    ),
    Case(
        "update_other_image",
        f"UPDATE generated_images SET image_url = 'x' WHERE id = '{B_PUB}'",
        HIDDEN,
    ),
    Case("delete_other_image", f"DELETE FROM generated_images WHERE id = '{B_PUB}'", HIDDEN),
    Case(
        "change_own_likes_count",
        f"UPDATE generated_images SET likes_count = 1000 WHERE id = '{A_PUB}'",
        denied("generated_images_client_columns"),
    ),
    Case(
        "change_own_storage_key",
        f"UPDATE generated_images SET storage_key = 'images/x.png' WHERE id = '{A_PRIV}'",
        denied("generated_images_client_columns"),
    ),
    Case(
        "change_own_job_id",
        f"UPDATE generated_images SET job_id = '{IDS['alice_service_job']}' WHERE id = '{A_PRIV}'",
        denied("generated_images_client_columns"),
    ),
    Case(
        "put_own_image_in_other_pack",
        f"UPDATE generated_images SET pack_id = '{IDS['bob_pack']}' WHERE id = '{A_PRIV}'",
        denied("generated_images_client_columns"),
    ),
    Case(
        "move_own_image_to_other_user",
        f"UPDATE generated_images SET user_id = '{BOB}' WHERE id = '{A_PRIV}'",
        denied(),
    ),
    Case(
        "insert_image_for_other_user",
        f"INSERT INTO generated_images (user_id, image_url) VALUES ('{BOB}', 'x')",
        denied(),
    ),
    Case(
        "insert_own_image_with_likes",
        "INSERT INTO generated_images (user_id, image_url, likes_count) "
        f"VALUES ('{ALICE}', 'x', 9)",
        denied(),
    ),
    Case(
        "insert_own_image_with_storage_key",
        f"INSERT INTO generated_images (user_id, image_url, storage_key) "
        f"VALUES ('{ALICE}', 'x', 'images/other.png')",
        denied(),
    ),
    # custom_prompts
    Case("read_other_prompt", f"SELECT * FROM custom_prompts WHERE user_id = '{BOB}'", HIDDEN),
    Case(
        "update_other_prompt",
        f"UPDATE custom_prompts SET title = 'x' WHERE id = '{IDS['bob_prompt']}'",
        HIDDEN,
    ),
    Case(
        "delete_other_prompt",
        f"DELETE FROM custom_prompts WHERE id = '{IDS['bob_prompt']}'",
        HIDDEN,
    ),
    Case(
        "insert_prompt_for_other_user",
        f"INSERT INTO custom_prompts (user_id, prompt_text) VALUES ('{BOB}', 'x')",
        denied(),
    ),
    Case(
        "move_prompt_to_self",
        f"UPDATE custom_prompts SET user_id = '{ALICE}' WHERE id = '{IDS['bob_prompt']}'",
        HIDDEN,
    ),
    # image_generation_jobs
    Case("read_other_job", f"SELECT * FROM image_generation_jobs WHERE user_id = '{BOB}'", HIDDEN),
    Case(
        "insert_job_with_kind",
        f"INSERT INTO image_generation_jobs (user_id, kind, prompt) "
        f"VALUES ('{ALICE}', 'generate', 'a fox')",
        denied(),
    ),
    Case(
        "insert_priced_job",
        f"INSERT INTO image_generation_jobs (user_id, cost) VALUES ('{ALICE}', 1)",
        denied(),
    ),
    Case(
        "insert_job_with_lease",
        f"INSERT INTO image_generation_jobs (user_id, lease_until, attempts) "
        f"VALUES ('{ALICE}', now(), 1)",
        denied(),
    ),
    Case(
        "insert_job_for_other_user",
        f"INSERT INTO image_generation_jobs (user_id) VALUES ('{BOB}')",
        denied(),
    ),
    Case(
        "touch_own_service_job",
        f"UPDATE image_generation_jobs SET status = 'succeeded' "
        f"WHERE id = '{IDS['alice_service_job']}'",
        HIDDEN,
    ),
    Case(
        "delete_own_service_job",
        f"DELETE FROM image_generation_jobs WHERE id = '{IDS['alice_service_job']}'",
        HIDDEN,
        denied(NO_GRANT),
    ),
    Case(
        "give_own_app_job_a_kind",
        f"UPDATE image_generation_jobs SET kind = 'generate', prompt = 'x' "
        f"WHERE id = '{IDS['alice_app_job']}'",
        denied(),
    ),
    Case(
        "set_lease_on_own_app_job",
        f"UPDATE image_generation_jobs SET lease_until = now(), worker_id = 'w' "
        f"WHERE id = '{IDS['alice_app_job']}'",
        denied(),
    ),
    Case(
        "set_error_code_on_own_app_job",
        f"UPDATE image_generation_jobs SET error_code = 'worker_lost' "
        f"WHERE id = '{IDS['alice_app_job']}'",
        denied(),
    ),
    Case(
        "insert_job_with_error_code",
        f"INSERT INTO image_generation_jobs (user_id, error_message, error_code) "
        f"VALUES ('{ALICE}', 'x', 'timed_out')",
        denied(),
    ),
    Case(
        "insert_job_with_error_code_alone",
        f"INSERT INTO image_generation_jobs (user_id, error_code) VALUES ('{ALICE}', 'timed_out')",
        denied(),
    ),
    Case(
        "set_attempts_on_own_app_job",
        f"UPDATE image_generation_jobs SET attempts = 3 WHERE id = '{IDS['alice_app_job']}'",
        denied(),
    ),
    Case(
        "set_cost_on_own_app_job",
        f"UPDATE image_generation_jobs SET cost = 1 WHERE id = '{IDS['alice_app_job']}'",
        denied(),
    ),
    Case(
        "update_other_app_job",
        f"UPDATE image_generation_jobs SET status = 'failed' WHERE id = '{IDS['bob_app_job']}'",
        HIDDEN,
    ),
    # subscriptions
    Case("read_other_subscription", f"SELECT * FROM subscriptions WHERE user_id = '{BOB}'", HIDDEN),
    Case(
        "update_own_subscription_to_paid",
        f"UPDATE subscriptions SET status = 'Pro' WHERE user_id = '{ALICE}'",
        HIDDEN,
    ),
    Case(
        "set_own_stripe_ids",
        f"UPDATE subscriptions SET stripe_customer_id = 'cus_x' WHERE user_id = '{ALICE}'",
        HIDDEN,
    ),
    Case(
        "upsert_own_subscription_to_paid",
        f"INSERT INTO subscriptions (user_id, status) VALUES ('{ALICE}', 'Pro') "
        "ON CONFLICT (user_id) DO UPDATE SET status = EXCLUDED.status",
        denied(),
    ),
    Case(
        "insert_paid_subscription",
        f"INSERT INTO subscriptions (user_id, status) VALUES ('{CAROL}', 'Pro')",
        denied(),
        sub=CAROL,
    ),
    Case(
        "insert_free_subscription_with_stripe_ids",
        f"INSERT INTO subscriptions (user_id, stripe_customer_id, stripe_subscription_id) "
        f"VALUES ('{CAROL}', 'cus_x', 'sub_x')",
        denied(),
        sub=CAROL,
    ),
    Case(
        "delete_own_subscription",
        f"DELETE FROM subscriptions WHERE user_id = '{ALICE}'",
        HIDDEN,
        denied(NO_GRANT),
    ),
    # credit_ledger
    Case("read_other_ledger", f"SELECT * FROM credit_ledger WHERE user_id = '{BOB}'", HIDDEN),
    Case(
        "write_own_ledger",
        f"INSERT INTO credit_ledger (user_id, delta, reason, balance_after) "
        f"VALUES ('{ALICE}', 100, 'purchase', 105)",
        denied(),
        denied(NO_GRANT),
    ),
    Case(
        "update_own_ledger",
        f"UPDATE credit_ledger SET delta = 100 WHERE user_id = '{ALICE}'",
        HIDDEN,
        denied(NO_GRANT),
    ),
    Case(
        "delete_own_ledger",
        f"DELETE FROM credit_ledger WHERE user_id = '{ALICE}'",
        HIDDEN,
        denied(NO_GRANT),
    ),
    # image_likes
    Case(
        "write_a_like",
        f"INSERT INTO image_likes (image_id, user_id) VALUES ('{A_PUB}', '{ALICE}')",
        denied(),
        denied(NO_GRANT),
    ),
    Case(
        "delete_own_like",
        f"DELETE FROM image_likes WHERE user_id = '{ALICE}'",
        HIDDEN,
        denied(NO_GRANT),
    ),
    # icon_packs
    Case("read_other_pack", f"SELECT * FROM icon_packs WHERE user_id = '{BOB}'", HIDDEN),
    Case(
        "insert_own_pack",
        f"INSERT INTO icon_packs (user_id, name) VALUES ('{ALICE}', 'Mine')",
        denied(),
        denied(NO_GRANT),
    ),
    Case(
        "update_own_pack",
        f"UPDATE icon_packs SET name = 'x' WHERE id = '{IDS['alice_pack']}'",
        HIDDEN,
        denied(NO_GRANT),
    ),
    Case(
        "delete_own_pack",
        f"DELETE FROM icon_packs WHERE id = '{IDS['alice_pack']}'",
        HIDDEN,
        denied(NO_GRANT),
    ),
    # the service's own tables
    Case("read_migrations", "SELECT * FROM atelier_migrations", HIDDEN, denied(NO_GRANT)),
    Case("delete_migrations", "DELETE FROM atelier_migrations", HIDDEN, denied(NO_GRANT)),
    # anon: public images only
    Case(
        "anon_reads_private_image",
        f"SELECT * FROM generated_images WHERE id = '{A_PRIV}'",
        HIDDEN,
        role="anon",
        sub=None,
    ),
    Case(
        "anon_reads_deleted_public_image",
        f"SELECT * FROM generated_images WHERE id = '{B_DEL}'",
        HIDDEN,
        role="anon",
        sub=None,
    ),
    Case(
        "anon_updates_public_image",
        f"UPDATE generated_images SET image_url = 'x' WHERE id = '{B_PUB}'",
        HIDDEN,
        denied(NO_GRANT),
        role="anon",
        sub=None,
    ),
    Case(
        "anon_inserts_image",
        f"INSERT INTO generated_images (user_id, image_url) VALUES ('{BOB}', 'x')",
        denied(),
        denied(NO_GRANT),
        role="anon",
        sub=None,
    ),
    Case(
        "anon_reads_users", "SELECT * FROM users", HIDDEN, denied(NO_GRANT), role="anon", sub=None
    ),
    Case(
        "anon_reads_ledger",
        "SELECT * FROM credit_ledger",
        HIDDEN,
        denied(NO_GRANT),
        role="anon",
        sub=None,
    ),
    Case(
        "anon_lowers_credits",
        f"UPDATE users SET credits = 0 WHERE id = '{ALICE}'",
        HIDDEN,
        denied(NO_GRANT),
        role="anon",
        sub=None,
    ),
    # a token for one user cannot pass for another through the claims it does not carry
    Case(
        "no_claims_reads_nothing",
        "SELECT * FROM generated_images WHERE visibility = 'private'",
        HIDDEN,
        sub=None,
    ),
]


@pytest.fixture(scope="module")
def world_url(
    template_db: str, new_database: Callable[..., str], drop_database: Callable[[str], None]
) -> Iterator[str]:
    """One seeded database for the whole matrix: each case runs in a transaction that is
    rolled back, so none sees another's effects."""
    url = new_database(template_db)

    async def build() -> None:
        async with connected(url) as conn:
            await seed(conn)

    asyncio.run(build())
    yield url
    drop_database(url)


@pytest.fixture(params=["migrated_grants", "supabase_grants"])
def grants(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
async def owner(world_url: str, grants: str) -> AsyncIterator[asyncpg.Connection]:
    """The owner's connection inside a transaction rolled back at the end; with
    `supabase_grants`, Supabase's default ALL is granted again inside it."""
    async with connected(world_url) as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            if grants == "supabase_grants":
                await conn.execute(
                    "GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated;"
                    "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO anon, authenticated"
                )
            yield conn
        finally:
            await tx.rollback()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_client_statement_outside_its_rights_is_refused_and_changes_nothing(
    owner: asyncpg.Connection, grants: str, case: Case
) -> None:
    expected = case.supabase_grants
    if grants == "migrated_grants" and case.migrated_grants is not None:
        expected = case.migrated_grants
    before = await snapshot(owner)
    is_read = case.sql.lstrip().upper().startswith("SELECT")

    if expected.how == "hidden":
        async with request(owner, case.role, case.sub) as conn:
            if is_read:
                assert await conn.fetch(case.sql) == []
            else:
                status = await conn.execute(case.sql)
                assert status.split()[-1] == "0", status
        # The request's savepoint was released into the test's transaction: leave its role.
        await owner.execute("RESET ROLE")
    else:
        error = (
            asyncpg.InsufficientPrivilegeError
            if expected.how == "denied"
            else asyncpg.CheckViolationError
        )
        with pytest.raises(error, match=expected.match):
            async with request(owner, case.role, case.sub) as conn:
                await conn.execute(case.sql)

    assert await snapshot(owner) == before
