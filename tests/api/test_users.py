"""Users: created by their first authenticated request, adopted when they predate the service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import asyncpg
import httpx
import pytest

from app.config import Settings
from tests.fakes.clerk_api import SECRET_KEY, ClerkApiServer
from tests.fakes.jwks import (
    AUTHORIZED_PARTY,
    ISSUER,
    JwksServer,
    SigningKey,
    session_token,
    signing_key,
)
from tests.fakes.running import running_settings as running
from tests.support.problems import assert_problem

ClerkSettings = Callable[..., Settings]
Headers = Callable[..., dict[str, str]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def key() -> SigningKey:
    return signing_key("primary")


@pytest.fixture
def jwks(key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer(key) as server:
        yield server


@pytest.fixture
def clerk_api() -> Iterator[ClerkApiServer]:
    with ClerkApiServer() as server:
        yield server


@pytest.fixture
def clerk_settings(
    make_settings: Callable[..., Settings], jwks: JwksServer, clerk_api: ClerkApiServer
) -> ClerkSettings:
    """AUTH=clerk against the loopback JWKS and the loopback Clerk Backend API."""

    def make(**changes: object) -> Settings:
        fields: dict[str, object] = {
            "auth": "clerk",
            "clerk_issuer": ISSUER,
            "clerk_jwks_url": jwks.url,
            "clerk_authorized_parties": [AUTHORIZED_PARTY],
            "clerk_secret_key": SECRET_KEY,
            "clerk_api_url": clerk_api.url,
        }
        fields.update(changes)
        return make_settings(**fields)

    return make


async def ledger_of(db: asyncpg.Connection, user_id: str) -> list[tuple[str, int, int]]:
    rows = await db.fetch(
        "SELECT reason, delta, balance_after FROM credit_ledger WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    return [(r["reason"], r["delta"], r["balance_after"]) for r in rows]


async def last_login(db: asyncpg.Connection, user_id: str) -> datetime | None:
    value: datetime | None = await db.fetchval(
        "SELECT last_login_at FROM users WHERE id = $1", user_id
    )
    return value


async def insert_existing_user(
    db: asyncpg.Connection, user_id: str, email: str, credits: int
) -> None:
    """A user the mobile app made before this service: a users row and no ledger at all."""
    await db.execute(
        "INSERT INTO users (id, email, credits) VALUES ($1, $2, $3)", user_id, email, credits
    )


# -- creation -------------------------------------------------------------------------------


async def test_first_request_of_a_new_sub_creates_the_user_with_five_credits_and_a_signup(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    response = await client.get("/v1/me", headers=auth_headers("user_new", "new@example.test"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["email"], body["credits"]) == ("user_new", "new@example.test", 5)
    row = await db.fetchrow("SELECT email, credits FROM users WHERE id = 'user_new'")
    assert row is not None
    assert (row["email"], row["credits"]) == ("new@example.test", 5)
    assert await ledger_of(db, "user_new") == [("signup", 5, 5)]


@pytest.mark.parametrize("credits", [7, 0])
async def test_new_user_credits_setting_decides_the_signup_grant(
    credits: int,
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
) -> None:
    async with running(make_settings(new_user_credits=credits)) as client:
        response = await client.get("/v1/me", headers=auth_headers("user_grant"))
    assert response.status_code == 200, response.text
    assert response.json()["credits"] == credits
    assert await ledger_of(db, "user_grant") == [("signup", credits, credits)]


async def test_later_requests_do_not_grant_again(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    for _ in range(5):
        response = await client.get("/v1/me", headers=auth_headers("user_again"))
        assert response.status_code == 200, response.text
        assert response.json()["credits"] == 5
    assert await ledger_of(db, "user_again") == [("signup", 5, 5)]


# -- where the email comes from -------------------------------------------------------------


async def test_email_comes_from_the_token_claim_without_asking_clerk(
    clerk_settings: ClerkSettings,
    key: SigningKey,
    clerk_api: ClerkApiServer,
    db: asyncpg.Connection,
) -> None:
    clerk_api.add_user("user_2claim", "directory@example.test")
    token = session_token(key, "user_2claim", email="claim@example.test")
    async with running(clerk_settings()) as client:
        response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "claim@example.test"
    assert clerk_api.requests == []
    assert await db.fetchval("SELECT email FROM users WHERE id = 'user_2claim'") == (
        "claim@example.test"
    )


async def test_email_comes_from_clerk_backend_api_when_the_token_has_none(
    clerk_settings: ClerkSettings,
    key: SigningKey,
    clerk_api: ClerkApiServer,
    db: asyncpg.Connection,
) -> None:
    clerk_api.add_user("user_2noemail", "primary@example.test", "secondary@example.test")
    token = session_token(key, "user_2noemail")  # Clerk's default session token: no email
    async with running(clerk_settings()) as client:
        response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "primary@example.test"
    assert await db.fetchval("SELECT email FROM users WHERE id = 'user_2noemail'") == (
        "primary@example.test"
    )
    assert await ledger_of(db, "user_2noemail") == [("signup", 5, 5)]
    assert clerk_api.requests == [("/v1/users/user_2noemail", f"Bearer {SECRET_KEY}")]


async def test_clerk_backend_api_down_is_a_503_and_creates_nothing(
    clerk_settings: ClerkSettings,
    key: SigningKey,
    clerk_api: ClerkApiServer,
    db: asyncpg.Connection,
) -> None:
    clerk_api.add_user("user_2later", "later@example.test")
    clerk_api.fail_with(502)
    token = session_token(key, "user_2later")
    async with running(clerk_settings()) as client:
        failed = await client.get("/v1/me", headers=bearer(token))
        assert_problem(failed, 503)
        assert await db.fetchval("SELECT count(*) FROM users") == 0
        clerk_api.fail_with(None)
        retried = await client.get("/v1/me", headers=bearer(token))
    assert retried.status_code == 200, retried.text
    assert retried.json()["email"] == "later@example.test"


async def test_clerk_backend_api_unreachable_is_a_503(
    clerk_settings: ClerkSettings, key: SigningKey, clerk_api: ClerkApiServer
) -> None:
    settings = clerk_settings()
    clerk_api.stop()
    async with running(settings) as client:
        response = await client.get("/v1/me", headers=bearer(session_token(key, "user_2gone")))
    assert_problem(response, 503)


async def test_user_clerk_does_not_know_is_refused(
    clerk_settings: ClerkSettings, key: SigningKey, db: asyncpg.Connection
) -> None:
    async with running(clerk_settings()) as client:
        response = await client.get("/v1/me", headers=bearer(session_token(key, "user_2ghost")))
    assert_problem(response, 401)
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_email_taken_by_another_account_is_a_409_problem(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    first = await client.get("/v1/me", headers=auth_headers("user_one", "shared@example.test"))
    assert first.status_code == 200, first.text
    second = await client.get("/v1/me", headers=auth_headers("user_two", "shared@example.test"))
    assert_problem(second, 409)
    assert await db.fetchval("SELECT count(*) FROM users") == 1


# -- concurrency ----------------------------------------------------------------------------


async def test_fifty_concurrent_first_requests_create_one_user_and_one_signup_entry(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    headers = auth_headers("user_rush", "rush@example.test")
    responses = await asyncio.gather(*(client.get("/v1/me", headers=headers) for _ in range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert {r.json()["credits"] for r in responses} == {5}
    assert await db.fetchval("SELECT count(*) FROM users WHERE id = 'user_rush'") == 1
    assert await ledger_of(db, "user_rush") == [("signup", 5, 5)]


async def test_fifty_concurrent_first_requests_without_email_claim_create_one_user(
    clerk_settings: ClerkSettings,
    key: SigningKey,
    clerk_api: ClerkApiServer,
    db: asyncpg.Connection,
) -> None:
    clerk_api.add_user("user_2rush", "rush@example.test")
    tokens = [session_token(key, "user_2rush") for _ in range(50)]  # distinct session ids
    async with running(clerk_settings()) as client:
        responses = await asyncio.gather(*(client.get("/v1/me", headers=bearer(t)) for t in tokens))
    assert [r.status_code for r in responses] == [200] * 50
    assert {r.json()["email"] for r in responses} == {"rush@example.test"}
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert await ledger_of(db, "user_2rush") == [("signup", 5, 5)]


# -- users who predate the service ----------------------------------------------------------


async def test_existing_user_gets_exactly_one_opening_balance(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await insert_existing_user(db, "user_old", "old@example.test", 9)
    headers = auth_headers("user_old", "old@example.test")
    async with running(make_settings()) as client:
        first = await client.get("/v1/me", headers=headers)
        burst = await asyncio.gather(*(client.get("/v1/me", headers=headers) for _ in range(10)))
        after = [await client.get("/v1/me", headers=headers) for _ in range(3)]
    # A second process (a restart, or another replica) has never seen the user either.
    async with running(make_settings()) as client:
        restarted = await client.get("/v1/me", headers=headers)
    for response in [first, *burst, *after, restarted]:
        assert response.status_code == 200, response.text
        assert response.json()["credits"] == 9
    assert await ledger_of(db, "user_old") == [("opening_balance", 9, 9)]
    assert await db.fetchval("SELECT credits FROM users WHERE id = 'user_old'") == 9


async def test_concurrent_first_requests_of_an_existing_user_open_one_balance(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await insert_existing_user(db, "user_oldrush", "oldrush@example.test", 9)
    headers = auth_headers("user_oldrush", "oldrush@example.test")
    responses = await asyncio.gather(*(client.get("/v1/me", headers=headers) for _ in range(30)))
    assert [r.status_code for r in responses] == [200] * 30
    assert await ledger_of(db, "user_oldrush") == [("opening_balance", 9, 9)]


async def test_existing_user_with_zero_credits_is_opened_with_a_zero_entry(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await insert_existing_user(db, "user_broke", "broke@example.test", 0)
    response = await client.get("/v1/me", headers=auth_headers("user_broke"))
    assert response.status_code == 200, response.text
    assert await ledger_of(db, "user_broke") == [("opening_balance", 0, 0)]


async def test_existing_user_keeps_their_email_and_balance(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await insert_existing_user(db, "user_keep", "keep@example.test", 9)
    response = await client.get("/v1/me", headers=auth_headers("user_keep", "new@example.test"))
    assert response.status_code == 200, response.text
    assert (response.json()["email"], response.json()["credits"]) == ("keep@example.test", 9)


async def test_a_live_negative_balance_still_signs_in_and_cannot_spend(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """A live database may hold a user the mobile app took below zero. The migration leaves
    the check NOT VALID for that row (tests/db/test_schema_additions.py); the user can still
    use the API, sees the debt, opens no ledger (balance_after cannot be negative) and cannot
    spend. Writing last_login_at to that row would violate the check, so it is skipped."""
    await db.execute("ALTER TABLE users DROP CONSTRAINT users_credits_nonnegative")
    await insert_existing_user(db, "user_debtor", "debtor@example.test", -2)
    await db.execute(
        "ALTER TABLE users ADD CONSTRAINT users_credits_nonnegative CHECK (credits >= 0) NOT VALID"
    )
    headers = auth_headers("user_debtor")

    me = await client.get("/v1/me", headers=headers)
    spent = await client.post("/v1/generations", json={"prompt": "a fox"}, headers=headers)

    assert me.status_code == 200, me.text
    assert me.json()["credits"] == -2
    assert spent.status_code == 402, spent.text
    assert (spent.json()["balance"], spent.json()["cost"]) == (-2, 1)
    row = await db.fetchrow("SELECT credits, last_login_at FROM users WHERE id = 'user_debtor'")
    assert row is not None and (row["credits"], row["last_login_at"]) == (-2, None)
    assert await ledger_of(db, "user_debtor") == []
    jobs = await db.fetchval(
        "SELECT count(*) FROM image_generation_jobs WHERE user_id = $1", "user_debtor"
    )
    assert jobs == 0


# -- last_login_at --------------------------------------------------------------------------


async def test_last_login_is_set_on_the_first_request_and_not_rewritten_right_after(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    headers = auth_headers("user_login")
    first = await client.get("/v1/me", headers=headers)
    assert first.status_code == 200, first.text
    stamped = await last_login(db, "user_login")
    assert stamped is not None
    for _ in range(3):
        again = await client.get("/v1/me", headers=headers)
        assert again.status_code == 200, again.text
    assert await last_login(db, "user_login") == stamped


async def test_last_login_of_an_existing_user_is_set_on_first_sight_only(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await insert_existing_user(db, "user_oldlogin", "oldlogin@example.test", 3)
    assert await last_login(db, "user_oldlogin") is None
    headers = auth_headers("user_oldlogin")
    first = await client.get("/v1/me", headers=headers)
    assert first.status_code == 200, first.text
    stamped = await last_login(db, "user_oldlogin")
    assert stamped is not None
    second = await client.get("/v1/me", headers=headers)
    assert second.status_code == 200, second.text
    assert await last_login(db, "user_oldlogin") == stamped


async def test_last_login_is_not_rewritten_by_a_restarted_process_within_the_interval(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    headers = auth_headers("user_replica")
    async with running(make_settings()) as client:
        assert (await client.get("/v1/me", headers=headers)).status_code == 200
    stamped = await last_login(db, "user_replica")
    assert stamped is not None
    async with running(make_settings()) as client:
        assert (await client.get("/v1/me", headers=headers)).status_code == 200
    assert await last_login(db, "user_replica") == stamped


async def test_last_login_is_rewritten_on_every_request_when_the_interval_is_zero(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    headers = auth_headers("user_eager")
    async with running(make_settings(last_login_interval_seconds=0)) as client:
        assert (await client.get("/v1/me", headers=headers)).status_code == 200
        first = await last_login(db, "user_eager")
        assert (await client.get("/v1/me", headers=headers)).status_code == 200
        second = await last_login(db, "user_eager")
    assert first is not None and second is not None
    assert second > first


# -- a signup burst against a slow Clerk ----------------------------------------------------
# 200 new users whose tokens carry no email arrive at once; Clerk (the loopback stand-in)
# takes 300 ms over each lookup, and the pool has five connections. Were a connection held
# through the lookup, at most five lookups could be in flight, the burst would take
# 200 x 0.3 s / 5 = 12 s, and every other user's request would queue behind it for the pool.

NEW_USERS = 200
CLERK_SECONDS = 1.0
POOL_SIZE = 5
# Far above a read's few milliseconds, even on a loaded machine with the burst's 200 token
# checks and signups on the same event loop (a read once took 5.5 s with two test runs
# sharing two cores), and far below what a read queued behind 200 Clerk-held connections
# would wait: 40 s for the whole burst, 200 / POOL_SIZE rounds of CLERK_SECONDS.
READ_BOUND_SECONDS = 10.0


async def test_a_signup_burst_waiting_on_a_slow_clerk_neither_drains_the_pool_nor_slows_reads(
    clerk_settings: ClerkSettings,
    key: SigningKey,
    clerk_api: ClerkApiServer,
    db: asyncpg.Connection,
) -> None:
    newcomers = [f"user_2burst_{n:03d}" for n in range(NEW_USERS)]
    for user_id in newcomers:
        clerk_api.add_user(user_id, f"{user_id}@example.test")
    clerk_api.add_user("user_2steady", "steady@example.test")
    steady = bearer(session_token(key, "user_2steady"))
    settings = clerk_settings(db_pool_min_size=1, db_pool_max_size=POOL_SIZE)

    async with running(settings) as client:
        assert (await client.get("/v1/me", headers=steady)).status_code == 200  # signed up
        clerk_api.answer_after(CLERK_SECONDS)
        reads: list[float] = []
        burst_over = asyncio.Event()

        async def read_meanwhile() -> None:
            while not burst_over.is_set():
                started = time.perf_counter()
                response = await client.get("/v1/me", headers=steady)
                reads.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                await asyncio.sleep(0.02)

        async def burst() -> list[httpx.Response]:
            try:
                return await asyncio.gather(
                    *(
                        client.get("/v1/me", headers=bearer(session_token(key, user_id)))
                        for user_id in newcomers
                    )
                )
            finally:
                burst_over.set()

        started = time.perf_counter()
        async with asyncio.timeout(60):
            answers, _ = await asyncio.gather(burst(), read_meanwhile())
        took = time.perf_counter() - started

    assert [r.status_code for r in answers] == [200] * NEW_USERS, answers[0].text
    assert {r.json()["email"] for r in answers} == {f"{u}@example.test" for u in newcomers}
    # The lookups overlapped far beyond the pool's size: none of them held a connection.
    assert clerk_api.max_in_flight > POOL_SIZE * 4, clerk_api.max_in_flight
    assert took >= CLERK_SECONDS
    # The steady user kept being answered throughout, each read well within the bound.
    assert len(reads) >= 3, reads
    assert max(reads) < READ_BOUND_SECONDS, sorted(reads)[-5:]
    # Every newcomer exists once with one signup entry: nothing failed or ran twice.
    counts = await db.fetch(
        """
        SELECT u.id, count(l.id) AS signups
        FROM users u LEFT JOIN credit_ledger l ON l.user_id = u.id AND l.reason = 'signup'
        WHERE u.id LIKE 'user_2burst_%' GROUP BY u.id
        """
    )
    assert len(counts) == NEW_USERS
    assert {r["signups"] for r in counts} == {1}
