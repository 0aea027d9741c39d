"""Row Level Security as PostgREST runs it: what the signed-in phone may still do, and what
its writes set off (the app_spend ledger rows, cascades, the feed), with the service as
owner unaffected. What it may not do is in test_rls_matrix.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from app.config import Settings
from app.db import jobs as jobs_db
from app.db import pool
from app.services import credits
from tests.db import cli_env, finish, start
from tests.db.rls_world import ALICE, BOB, CAROL, IDS, TABLES, seed
from tests.fakes.mobile_app import (
    PRISMA_DECREMENT_CREDITS,
    SPEND_CREDITS,
    UPSERT_SUBSCRIPTION,
    run_mobile_app_statements_as_client,
)
from tests.support.generations import debit
from tests.support.polling import wait_until
from tests.support.postgrest import request
from tests.support.serve import ATELIER


async def ledger_rows(conn: asyncpg.Connection, user_id: str) -> list[tuple[int, str, int]]:
    rows = await conn.fetch(
        "SELECT delta, reason, balance_after FROM credit_ledger WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    return [(r["delta"], r["reason"], r["balance_after"]) for r in rows]


async def assert_ledger_explains_every_balance(conn: asyncpg.Connection) -> None:
    """What `atelier check-ledger` asks (the same service function)."""
    bad, _ = await credits.check(conn)
    assert [dict(r) for r in bad] == []


# --- the app keeps working ------------------------------------------------------------------


async def test_every_app_statement_runs_as_the_signed_in_user(db: asyncpg.Connection) -> None:
    await run_mobile_app_statements_as_client(db)
    await run_mobile_app_statements_as_client(db)  # fresh users: any number of runs
    await assert_ledger_explains_every_balance(db)
    # Each client-created user spent one credit: opened at 5, then app_spend.
    spends = await db.fetch(
        "SELECT user_id, delta, balance_after FROM credit_ledger WHERE reason = 'app_spend'"
    )
    assert sorted((r["delta"], r["balance_after"]) for r in spends) == [(-1, 4)] * 4
    assert await db.fetchval("SELECT count(*) FROM credit_ledger") == 8


async def test_the_old_stripe_handlers_upsert_is_refused_to_a_client(
    db: asyncpg.Connection,
) -> None:
    """The one statement run_mobile_app_statements_as_client leaves out: the old backend's,
    never the phone's. Neither its insert path nor its update path is open to a client."""
    await seed(db)
    for user_id in (CAROL, ALICE):  # no row yet / a Free row
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with request(db, "authenticated", user_id) as conn:
                await conn.execute(
                    UPSERT_SUBSCRIPTION, user_id, "Pro", "cus_x", "sub_x", "price_pro", None
                )
    rows = await db.fetch("SELECT user_id, status, stripe_customer_id FROM subscriptions")
    assert sorted(tuple(r) for r in rows) == [(ALICE, "Free", None), (BOB, "Free", None)]


async def test_the_app_moves_its_own_app_job_along(db: asyncpg.Connection) -> None:
    await seed(db)
    async with request(db, "authenticated", ALICE) as conn:
        status = await conn.execute(
            """UPDATE image_generation_jobs
               SET status = 'completed', progress = 100, completed_at = now(),
                   output_image_url = 'https://cdn.example.test/out.png'
               WHERE id = $1""",
            IDS["alice_app_job"],
        )
    assert status == "UPDATE 1"
    row = await db.fetchrow(
        "SELECT status, progress, kind, cost FROM image_generation_jobs WHERE id = $1",
        IDS["alice_app_job"],
    )
    assert row is not None and tuple(row) == ("completed", 100, None, 0)


async def test_a_user_reads_own_rows_public_images_and_all_likes(db: asyncpg.Connection) -> None:
    await seed(db)
    async with request(db, "authenticated", ALICE) as conn:
        images = {r["id"] for r in await conn.fetch("SELECT id FROM generated_images")}
        users = [r["id"] for r in await conn.fetch("SELECT id FROM users")]
        jobs = {r["id"] for r in await conn.fetch("SELECT id FROM image_generation_jobs")}
        ledger = {r["user_id"] for r in await conn.fetch("SELECT user_id FROM credit_ledger")}
        likes = await conn.fetchval("SELECT count(*) FROM image_likes")
        packs = [r["id"] for r in await conn.fetch("SELECT id FROM icon_packs")]
    assert images == {IDS["alice_private"], IDS["alice_public"], IDS["bob_public"]}
    assert users == [ALICE]
    assert jobs == {IDS["alice_service_job"], IDS["alice_app_job"]}
    assert ledger == {ALICE}
    assert likes == 2
    assert packs == [IDS["alice_pack"]]


async def test_anon_reads_public_images_only(db: asyncpg.Connection) -> None:
    await seed(db)
    async with request(db, "anon") as conn:
        images = {r["id"] for r in await conn.fetch("SELECT id FROM generated_images")}
    assert images == {IDS["alice_public"], IDS["bob_public"]}


async def test_every_table_has_rls_and_clients_hold_only_what_the_policies_need(
    db: asyncpg.Connection,
) -> None:
    """Any table added later without RLS fails here: on Supabase the client roles get ALL
    on it by default, and with RLS off that is every row to every phone."""
    tables = {
        r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"])
        for r in await db.fetch(
            """SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
               WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"""
        )
    }
    assert set(TABLES) <= set(tables)
    # Enabled everywhere, forced nowhere: the owner (the service, Prisma) bypasses it.
    assert {name: flags for name, flags in tables.items() if flags != (True, False)} == {}
    granted = await db.fetch(
        """SELECT grantee, table_name, string_agg(privilege_type, ',' ORDER BY privilege_type)
                  AS privileges
           FROM information_schema.role_table_grants
           WHERE table_schema = 'public' AND grantee IN ('anon', 'authenticated')
           GROUP BY grantee, table_name"""
    )
    assert {(r["grantee"], r["table_name"]): r["privileges"] for r in granted} == {
        ("anon", "generated_images"): "SELECT",
        ("authenticated", "users"): "INSERT,SELECT,UPDATE",
        ("authenticated", "generated_images"): "DELETE,INSERT,SELECT,UPDATE",
        ("authenticated", "custom_prompts"): "DELETE,INSERT,SELECT,UPDATE",
        ("authenticated", "image_generation_jobs"): "INSERT,SELECT,UPDATE",
        ("authenticated", "subscriptions"): "INSERT,SELECT,UPDATE",
        ("authenticated", "credit_ledger"): "SELECT",
        ("authenticated", "icon_packs"): "SELECT",
        ("authenticated", "image_likes"): "SELECT",
    }


# --- app_spend: the app's own deductions are ledgered, nothing else is ----------------------


async def test_a_client_lowering_its_credits_is_ledgered_as_app_spend(
    db: asyncpg.Connection,
) -> None:
    await seed(db)
    async with request(db, "authenticated", ALICE) as conn:
        assert await conn.execute(SPEND_CREDITS, ALICE, 1) == "UPDATE 1"
        assert await conn.execute(SPEND_CREDITS, ALICE, 2) == "UPDATE 1"  # same request
    async with request(db, "authenticated", ALICE) as conn:
        assert await conn.execute(SPEND_CREDITS, ALICE, 1) == "UPDATE 1"
    assert await ledger_rows(db, ALICE) == [
        (5, "signup", 5),
        (-3, "app_spend", 2),  # one row per transaction, as the difference at commit
        (-1, "app_spend", 1),
    ]
    assert await db.fetchval("SELECT credits FROM users WHERE id = $1", ALICE) == 1
    await assert_ledger_explains_every_balance(db)


async def test_a_refused_or_rolled_back_decrease_leaves_no_ledger_row(
    db: asyncpg.Connection,
) -> None:
    await seed(db)
    with pytest.raises(asyncpg.CheckViolationError, match="users_credits_nonnegative"):
        async with request(db, "authenticated", ALICE) as conn:
            await conn.execute(SPEND_CREDITS, ALICE, 6)
    with pytest.raises(RuntimeError):
        async with request(db, "authenticated", ALICE) as conn:
            await conn.execute(SPEND_CREDITS, ALICE, 1)
            raise RuntimeError("the request failed after the update")
    assert await ledger_rows(db, ALICE) == [(5, "signup", 5)]
    assert await db.fetchval("SELECT credits FROM users WHERE id = $1", ALICE) == 5


async def test_a_user_the_service_never_opened_is_opened_before_its_app_spend(
    db: asyncpg.Connection,
) -> None:
    async with request(db, "authenticated", CAROL) as conn:
        await conn.execute(
            "INSERT INTO users (id, email, credits) VALUES ($1, 'c@x.test', 5)", CAROL
        )
    assert await ledger_rows(db, CAROL) == []  # noted by check-ledger as not opened yet
    async with request(db, "authenticated", CAROL) as conn:
        await conn.execute(SPEND_CREDITS, CAROL, 2)
    assert await ledger_rows(db, CAROL) == [(5, "opening_balance", 5), (-2, "app_spend", 3)]
    await assert_ledger_explains_every_balance(db)
    assert await credits.check(db) == ([], 0)


async def test_prismas_decrement_as_the_owner_is_ledgered_too(db: asyncpg.Connection) -> None:
    """Prisma connects as the owner, like the service, so no role test tells them apart:
    the ledger's own balance does."""
    await seed(db)
    row = await db.fetchrow(PRISMA_DECREMENT_CREDITS, 2, None, ALICE)
    assert row is not None and row["credits"] == 3
    assert await ledger_rows(db, ALICE) == [(5, "signup", 5), (-2, "app_spend", 3)]
    await assert_ledger_explains_every_balance(db)


async def test_the_services_own_balance_changes_get_no_second_ledger_row(
    db: asyncpg.Connection,
) -> None:
    await seed(db)
    await pool.init_connection(db)  # the service's jsonb codec
    job_id = uuid.uuid4()
    async with db.transaction():
        created = await jobs_db.create_with_debit(
            db,
            job_id=job_id,
            user_id=ALICE,
            kind="generate",
            prompt="a fox",
            params={},
            cost=2,
            model=None,
            input_image_key=None,
            idempotency_key=None,
            request_hash="h",
        )
        assert created["id"] == job_id
    async with db.transaction():
        assert await debit(db, ALICE, 1) == 2
    async with db.transaction():
        assert await credits.refund(db, job_id) == 2
    async with db.transaction():
        grant = await credits.grant(db, ALICE, -3, "admin", "admin_req_1")
        assert grant.balance == 1
    assert await ledger_rows(db, ALICE) == [
        (5, "signup", 5),
        (-2, "generate", 3),
        (-1, "generate", 2),
        (2, "refund", 4),
        (-3, "admin", 1),
    ]
    await assert_ledger_explains_every_balance(db)


async def test_an_owners_raise_behind_the_ledger_is_still_reported_not_hidden(
    db: asyncpg.Connection,
) -> None:
    """The trigger records decreases only: a raise no ledger row explains stays a mismatch,
    and a later app_spend is recorded from the ledger's balance, not papered over."""
    await seed(db)
    await db.execute("UPDATE users SET credits = credits + 3 WHERE id = $1", ALICE)
    await db.execute(SPEND_CREDITS, ALICE, 1)
    assert await ledger_rows(db, ALICE) == [(5, "signup", 5)]
    bad, _ = await credits.check(db)
    assert [(r["id"], r["credits"], r["total"]) for r in bad] == [(ALICE, 7, 5)]


# --- triggers fired by a client's statement --------------------------------------------------


async def test_a_client_deleting_its_public_image_takes_its_likes_and_leaves_the_feed(
    db: asyncpg.Connection, db_url: str
) -> None:
    await seed(db)
    await db.execute(
        "UPDATE icon_packs SET cover_image_id = $1 WHERE id = $2",
        IDS["alice_public"],
        IDS["alice_pack"],
    )
    heard: list[str] = []
    listener = await asyncpg.connect(db_url)
    try:
        await listener.add_listener("atelier_feed", lambda *args: heard.append(args[-1]))
        async with request(db, "authenticated", ALICE) as conn:
            status = await conn.execute(
                "DELETE FROM generated_images WHERE id = $1", IDS["alice_public"]
            )
        assert status == "DELETE 1"
        await wait_until(lambda: bool(heard), "the feed's removal")
    finally:
        await listener.close()
    assert [json.loads(h) for h in heard] == [{"type": "removed", "id": str(IDS["alice_public"])}]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM image_likes WHERE image_id = $1", IDS["alice_public"]
        )
        == 0
    )
    # Alice's own like of Bob's image, and its count, are untouched.
    assert (
        await db.fetchval(
            "SELECT likes_count FROM generated_images WHERE id = $1", IDS["bob_public"]
        )
        == 1
    )
    assert await db.fetchval("SELECT count(*) FROM image_likes") == 1
    assert (
        await db.fetchval("SELECT cover_image_id FROM icon_packs WHERE id = $1", IDS["alice_pack"])
        is None
    )


async def test_a_client_making_its_image_public_announces_it_on_the_feed(
    db: asyncpg.Connection, db_url: str
) -> None:
    await seed(db)
    heard: list[str] = []
    listener = await asyncpg.connect(db_url)
    try:
        await listener.add_listener("atelier_feed", lambda *args: heard.append(args[-1]))
        async with request(db, "authenticated", ALICE) as conn:
            await conn.execute(
                "UPDATE generated_images SET visibility = 'public' WHERE id = $1",
                IDS["alice_private"],
            )
        await wait_until(lambda: bool(heard), "the feed's announcement")
    finally:
        await listener.close()
    announced = json.loads(heard[0])
    assert (announced["type"], announced["id"]) == ("image", str(IDS["alice_private"]))


async def test_a_client_creates_its_user_with_at_most_the_default_new_user_credits(
    db: asyncpg.Connection,
) -> None:
    """The migration's constant is the service's NEW_USER_CREDITS default: a change to one
    without the other fails here (the matrix shows one credit more refused)."""
    limit = await db.fetchval("SELECT atelier_client_new_user_credits()")
    assert limit == Settings.model_fields["new_user_credits"].default == 5
    async with request(db, "authenticated", CAROL) as conn:
        status = await conn.execute(
            "INSERT INTO users (id, email, credits) VALUES ($1, 'c@x.test', $2)", CAROL, limit
        )
    assert status == "INSERT 0 1"


async def test_concurrent_app_spends_and_service_debits_are_each_ledgered_once(
    db: asyncpg.Connection, db_url: str
) -> None:
    """The app's deductions and the service's debits on one balance at the same moment:
    each is recorded exactly once, and the ledger explains the balance afterwards."""
    await seed(db)
    await db.execute("UPDATE users SET credits = 20 WHERE id = $1", ALICE)
    await db.execute(
        "UPDATE credit_ledger SET delta = 20, balance_after = 20 WHERE user_id = $1", ALICE
    )
    conns = [await asyncpg.connect(db_url) for _ in range(12)]
    try:

        async def app_spend(conn: asyncpg.Connection) -> None:
            async with request(conn, "authenticated", ALICE) as client:
                assert await client.execute(SPEND_CREDITS, ALICE, 1) == "UPDATE 1"

        async def service_debit(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await debit(conn, ALICE, 2)

        await asyncio.gather(
            *(app_spend(c) for c in conns[:8]), *(service_debit(c) for c in conns[8:])
        )
    finally:
        for conn in conns:
            await conn.close()
    assert await db.fetchval("SELECT credits FROM users WHERE id = $1", ALICE) == 20 - 8 - 8
    rows = await ledger_rows(db, ALICE)
    assert sorted((delta, reason) for delta, reason, _ in rows[1:]) == sorted(
        [(-2, "generate")] * 4 + [(-1, "app_spend")] * 8
    )
    # A chain: each row's balance_after is the previous one's plus its delta.
    for (_, _, before), (delta, _, after) in zip(rows, rows[1:], strict=False):
        assert before + delta == after, rows
    await assert_ledger_explains_every_balance(db)


async def test_check_ledger_passes_after_the_apps_own_spends(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    await seed(db)
    async with request(db, "authenticated", ALICE) as conn:
        await conn.execute(SPEND_CREDITS, ALICE, 2)
    await db.fetchrow(PRISMA_DECREMENT_CREDITS, 1, None, BOB)

    code, out, err = await finish(
        await start([str(ATELIER), "check-ledger"], cli_env(db_url, tmp_path), tmp_path)
    )
    assert code == 0, out + err
    assert "every balance matches its ledger" in out
