"""The credit service: every balance change is one statement, in the caller's transaction,
and the ledger explains every balance, also under concurrency."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.db import users as users_db
from app.errors import Conflict, InsufficientCredits, NotFound
from app.main import create_app
from app.services import credits


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(db_url, min_size=1, max_size=20)
    assert created is not None
    try:
        yield created
    finally:
        await created.close()


async def make_user(conn: asyncpg.Connection, user_id: str, balance: int) -> None:
    row = await users_db.create_with_signup(conn, user_id, f"{user_id}@example.test", balance)
    assert row is not None


async def balance_of(conn: asyncpg.Connection, user_id: str) -> int:
    value = await conn.fetchval("SELECT credits FROM users WHERE id = $1", user_id)
    return int(value)


async def ledger_of(conn: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, delta, reason, job_id, source_id, balance_after, note"
        " FROM credit_ledger WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    return rows


async def assert_ledger_explains(conn: asyncpg.Connection, user_id: str) -> int:
    """credits == sum(delta) == the last balance_after, and never negative; returns credits."""
    rows = await ledger_of(conn, user_id)
    credits_now = await balance_of(conn, user_id)
    assert rows, f"{user_id} has no ledger"
    assert credits_now == sum(r["delta"] for r in rows)
    assert credits_now == rows[-1]["balance_after"]
    assert credits_now >= 0
    assert all(r["balance_after"] >= 0 for r in rows)
    return credits_now


# --- spend ---------------------------------------------------------------------------------


async def test_spend_debits_the_balance_and_records_one_ledger_row(
    db: asyncpg.Connection,
) -> None:
    await make_user(db, "user_a", 5)
    job = uuid.uuid4()
    async with db.transaction():
        assert await credits.spend(db, "user_a", 2, "generate", job) == 3
    assert await balance_of(db, "user_a") == 3
    rows = await ledger_of(db, "user_a")
    assert [(r["delta"], r["reason"], r["job_id"], r["balance_after"]) for r in rows] == [
        (5, "signup", None, 5),
        (-2, "generate", job, 3),
    ]


async def test_spend_is_undone_when_the_callers_transaction_rolls_back(
    db: asyncpg.Connection,
) -> None:
    await make_user(db, "user_a", 5)
    job = uuid.uuid4()

    class CallerFailed(Exception):
        pass

    with pytest.raises(CallerFailed):
        async with db.transaction():
            assert await credits.spend(db, "user_a", 3, "edit", job) == 2
            # the spend is visible inside the caller's transaction...
            assert await balance_of(db, "user_a") == 2
            raise CallerFailed
    # ...and gone with it: no balance change, no ledger row
    assert await balance_of(db, "user_a") == 5
    assert [r["reason"] for r in await ledger_of(db, "user_a")] == ["signup"]
    assert await db.fetchval("SELECT count(*) FROM credit_ledger WHERE job_id = $1", job) == 0


async def test_spend_beyond_the_balance_raises_insufficient_credits_and_changes_nothing(
    db: asyncpg.Connection,
) -> None:
    await make_user(db, "user_a", 5)
    with pytest.raises(InsufficientCredits) as caught:
        async with db.transaction():
            await credits.spend(db, "user_a", 6, "generate", uuid.uuid4())
    problem = caught.value.to_problem()
    assert caught.value.status == 402
    assert problem["balance"] == 5
    assert problem["cost"] == 6
    assert await balance_of(db, "user_a") == 5
    assert [r["reason"] for r in await ledger_of(db, "user_a")] == ["signup"]


async def test_spend_for_an_unknown_user_is_not_found(db: asyncpg.Connection) -> None:
    with pytest.raises(NotFound):
        await credits.spend(db, "user_nobody", 1, "generate", uuid.uuid4())
    with pytest.raises(NotFound):  # a free kind (COST_*=0) still needs a real user
        await credits.spend(db, "user_nobody", 0, "generate", uuid.uuid4())
    assert await db.fetchval("SELECT count(*) FROM credit_ledger") == 0


async def test_free_spend_returns_the_balance_and_writes_nothing(db: asyncpg.Connection) -> None:
    await make_user(db, "user_a", 5)
    assert await credits.spend(db, "user_a", 0, "generate", uuid.uuid4()) == 5
    assert [r["reason"] for r in await ledger_of(db, "user_a")] == ["signup"]


async def test_insufficient_credits_is_rendered_as_402_problem_json(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    application = create_app(settings)

    @application.post("/test/spend")
    async def spend_route(user_id: str, cost: int) -> dict[str, int]:
        # hosts the real service only: one pool connection, the caller's transaction
        async with pool.acquire() as conn, conn.transaction():
            balance = await credits.spend(conn, user_id, cost, "generate", uuid.uuid4())
        return {"balance": balance}

    async with pool.acquire() as conn:
        await make_user(conn, "user_a", 2)
    transport = httpx.ASGITransport(app=application)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=transport, base_url="http://atelier.test") as client,
    ):
        short = await client.post("/test/spend", params={"user_id": "user_a", "cost": 3})
        assert short.status_code == 402, short.text
        assert short.headers["content-type"].startswith("application/problem+json")
        body = short.json()
        assert body["status"] == 402
        assert body["type"].endswith("/insufficient-credits")
        assert body["balance"] == 2
        assert body["cost"] == 3
        async with pool.acquire() as conn:
            assert await balance_of(conn, "user_a") == 2
            assert [r["reason"] for r in await ledger_of(conn, "user_a")] == ["signup"]

        enough = await client.post("/test/spend", params={"user_id": "user_a", "cost": 2})
        assert enough.status_code == 200, enough.text
        assert enough.json() == {"balance": 0}


async def test_spend_never_overdraws_under_concurrency(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await make_user(conn, "user_a", 5)

    async def one_spend() -> int | InsufficientCredits:
        async with pool.acquire() as conn, conn.transaction():
            try:
                return await credits.spend(conn, "user_a", 1, "generate", uuid.uuid4())
            except InsufficientCredits as exc:
                return exc

    results = await asyncio.gather(*(one_spend() for _ in range(200)))
    successes = sorted(r for r in results if isinstance(r, int))
    refusals = [r for r in results if isinstance(r, InsufficientCredits)]
    assert successes == [0, 1, 2, 3, 4]
    assert len(refusals) == 195
    for refusal in refusals:
        problem = refusal.to_problem()
        # a refusal says why: the balance it reports is short of the cost
        assert problem["cost"] == 1
        assert problem["balance"] < problem["cost"], problem
    async with pool.acquire() as conn:
        assert await assert_ledger_explains(conn, "user_a") == 0
        rows = await ledger_of(conn, "user_a")
        assert [r["reason"] for r in rows] == ["signup"] + ["generate"] * 5
        assert [r["balance_after"] for r in rows] == [5, 4, 3, 2, 1, 0]


async def test_a_job_is_debited_at_most_once(db: asyncpg.Connection) -> None:
    await make_user(db, "user_a", 5)
    job = uuid.uuid4()
    await credits.spend(db, "user_a", 1, "generate", job)
    with pytest.raises(asyncpg.UniqueViolationError):
        async with db.transaction():
            await credits.spend(db, "user_a", 1, "generate", job)
    assert await assert_ledger_explains(db, "user_a") == 4


# --- refund --------------------------------------------------------------------------------


async def test_refund_gives_the_debit_back_once_when_called_twice(db: asyncpg.Connection) -> None:
    await make_user(db, "user_a", 5)
    job = uuid.uuid4()
    await credits.spend(db, "user_a", 3, "style", job)
    async with db.transaction():
        assert await credits.refund(db, job) == 3
    async with db.transaction():
        assert await credits.refund(db, job) is None
    assert await assert_ledger_explains(db, "user_a") == 5
    rows = await ledger_of(db, "user_a")
    assert [(r["delta"], r["reason"], r["job_id"]) for r in rows[1:]] == [
        (-3, "style", job),
        (3, "refund", job),
    ]


async def test_refund_happens_once_under_concurrency(pool: asyncpg.Pool) -> None:
    job = uuid.uuid4()
    async with pool.acquire() as conn:
        await make_user(conn, "user_a", 5)
        await credits.spend(conn, "user_a", 2, "generate", job)

    async def one_refund() -> int | None:
        async with pool.acquire() as conn, conn.transaction():
            return await credits.refund(conn, job)

    results = await asyncio.gather(*(one_refund() for _ in range(20)))
    assert sorted(results, key=lambda r: r is not None) == [None] * 19 + [2]
    async with pool.acquire() as conn:
        assert await assert_ledger_explains(conn, "user_a") == 5
        refunds = await conn.fetchval(
            "SELECT count(*) FROM credit_ledger WHERE job_id = $1 AND reason = 'refund'", job
        )
        assert refunds == 1


async def test_refund_of_a_job_that_was_never_debited_gives_nothing(
    db: asyncpg.Connection,
) -> None:
    await make_user(db, "user_a", 5)
    assert await credits.refund(db, uuid.uuid4()) is None
    # a spend refused for lack of credits did not debit its job either
    short_job = uuid.uuid4()
    with pytest.raises(InsufficientCredits):
        await credits.spend(db, "user_a", 9, "generate", short_job)
    assert await credits.refund(db, short_job) is None
    assert await assert_ledger_explains(db, "user_a") == 5
    assert [r["reason"] for r in await ledger_of(db, "user_a")] == ["signup"]


async def test_refund_is_undone_with_the_callers_transaction_and_can_happen_later(
    db: asyncpg.Connection,
) -> None:
    await make_user(db, "user_a", 5)
    job = uuid.uuid4()
    await credits.spend(db, "user_a", 1, "generate", job)
    tx = db.transaction()
    await tx.start()
    assert await credits.refund(db, job) == 1
    await tx.rollback()
    assert await assert_ledger_explains(db, "user_a") == 4
    assert await credits.refund(db, job) == 1
    assert await assert_ledger_explains(db, "user_a") == 5


# --- grant ---------------------------------------------------------------------------------


async def test_grant_applies_once_per_source_id(db: asyncpg.Connection) -> None:
    await make_user(db, "user_a", 5)
    first = await credits.grant(db, "user_a", 10, "purchase", "evt_1")
    assert first == credits.GrantResult(applied=True, balance=15)
    again = await credits.grant(db, "user_a", 10, "purchase", "evt_1")
    assert again == credits.GrantResult(applied=False, balance=15)
    other = await credits.grant(db, "user_a", 4, "subscription_grant", "in_1")
    assert other == credits.GrantResult(applied=True, balance=19)
    assert await assert_ledger_explains(db, "user_a") == 19
    rows = await ledger_of(db, "user_a")
    assert [(r["delta"], r["reason"], r["source_id"]) for r in rows[1:]] == [
        (10, "purchase", "evt_1"),
        (4, "subscription_grant", "in_1"),
    ]


async def test_grant_applies_once_per_source_id_under_concurrency(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await make_user(conn, "user_a", 5)

    async def one_grant() -> credits.GrantResult:
        async with pool.acquire() as conn, conn.transaction():
            return await credits.grant(conn, "user_a", 7, "purchase", "evt_dup")

    results = await asyncio.gather(*(one_grant() for _ in range(30)))
    assert sum(r.applied for r in results) == 1
    assert all(r.balance == 12 for r in results)
    async with pool.acquire() as conn:
        assert await assert_ledger_explains(conn, "user_a") == 12
        count = await conn.fetchval(
            "SELECT count(*) FROM credit_ledger WHERE source_id = 'evt_dup'"
        )
        assert count == 1


async def test_negative_admin_grant_that_would_overdraw_is_a_conflict(
    db: asyncpg.Connection,
) -> None:
    await make_user(db, "user_a", 5)
    with pytest.raises(Conflict) as caught:
        await credits.grant(db, "user_a", -6, "admin", "adm_1", note="too much")
    assert caught.value.status == 409
    assert caught.value.to_problem()["balance"] == 5
    assert await assert_ledger_explains(db, "user_a") == 5
    assert [r["reason"] for r in await ledger_of(db, "user_a")] == ["signup"]
    # the refused source id was not used up, and a grant that fits goes through
    taken = await credits.grant(db, "user_a", -5, "admin", "adm_1", note="all of it")
    assert taken == credits.GrantResult(applied=True, balance=0)
    assert await assert_ledger_explains(db, "user_a") == 0
    assert (await ledger_of(db, "user_a"))[-1]["note"] == "all of it"


async def test_grant_to_an_unknown_user_is_not_found(db: asyncpg.Connection) -> None:
    with pytest.raises(NotFound):
        await credits.grant(db, "user_nobody", 5, "purchase", "evt_x")
    assert await db.fetchval("SELECT count(*) FROM credit_ledger") == 0


# --- invariants ----------------------------------------------------------------------------


async def test_database_refuses_a_negative_balance(db: asyncpg.Connection) -> None:
    await make_user(db, "user_a", 5)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE users SET credits = -1 WHERE id = 'user_a'")
    assert await balance_of(db, "user_a") == 5


async def test_check_names_a_balance_changed_behind_the_ledgers_back(
    db: asyncpg.Connection,
) -> None:
    await make_user(db, "user_honest", 5)
    await make_user(db, "user_tampered", 5)
    await credits.spend(db, "user_honest", 1, "generate", uuid.uuid4())
    assert await credits.check(db) == ([], 0)
    await db.execute("UPDATE users SET credits = credits + 3 WHERE id = 'user_tampered'")
    bad, unopened = await credits.check(db)
    assert [(r["id"], r["credits"], r["total"]) for r in bad] == [("user_tampered", 8, 5)]
    assert unopened == 0


@dataclass
class Outcomes:
    spent: dict[UUID, tuple[str, int]] = field(default_factory=dict)
    rolled_back: set[UUID] = field(default_factory=set)
    refunded: dict[UUID, int] = field(default_factory=dict)
    granted: dict[str, tuple[str, int]] = field(default_factory=dict)
    refused: int = 0


async def test_random_concurrent_spends_refunds_and_grants_keep_every_balance_explained(
    pool: asyncpg.Pool,
) -> None:
    rng = random.Random(20261123)
    users = ["user_r0", "user_r1", "user_r2"]
    opening = 3
    async with pool.acquire() as conn:
        for user_id in users:
            await make_user(conn, user_id, opening)

    # A plan made up front from the seed; the order the operations land in is up to the race.
    plan: list[tuple[str, ...]] = []
    jobs: list[UUID] = []
    sources: list[str] = []
    for n in range(400):
        kind = rng.choices(["spend", "refund", "grant"], weights=[5, 2, 3])[0]
        if kind == "refund" and jobs:
            job = rng.choice(jobs)
            plan.append(("refund", str(job)))
            if rng.random() < 0.3:
                plan.append(("refund", str(job)))  # the same job refunded twice
        elif kind == "grant" or kind == "refund":
            user_id = rng.choice(users)
            if sources and rng.random() < 0.25:
                source = rng.choice(sources)  # a duplicate delivery
            else:
                source = f"src_{n}"
                sources.append(source)
            if rng.random() < 0.3:
                amount = rng.choice([-4, -3, -2, -1, 1, 2])
                plan.append(("grant", user_id, str(amount), "admin", source))
            else:
                plan.append(("grant", user_id, str(rng.randint(1, 4)), "purchase", source))
        else:
            job = uuid.uuid4()
            jobs.append(job)
            rollback = "rollback" if rng.random() < 0.1 else "commit"
            plan.append(("spend", rng.choice(users), str(rng.randint(1, 3)), str(job), rollback))
    rng.shuffle(plan)

    out = Outcomes()
    gate = asyncio.Semaphore(16)

    class CallerFailed(Exception):
        pass

    async def run(op: tuple[str, ...]) -> None:
        async with gate, pool.acquire() as conn:
            try:
                async with conn.transaction():
                    if op[0] == "spend":
                        _, user_id, cost, job_text, ending = op
                        job = UUID(job_text)
                        after = await credits.spend(conn, user_id, int(cost), "generate", job)
                        assert after >= 0
                        if ending == "rollback":
                            raise CallerFailed
                        out.spent[job] = (user_id, int(cost))
                    elif op[0] == "refund":
                        job = UUID(op[1])
                        amount = await credits.refund(conn, job)
                        if amount is not None:
                            assert job not in out.refunded
                            out.refunded[job] = amount
                    else:
                        _, user_id, amount_text, reason, source = op
                        result = await credits.grant(
                            conn, user_id, int(amount_text), reason, source
                        )
                        assert result.balance >= 0
                        if result.applied:
                            assert source not in out.granted
                            out.granted[source] = (user_id, int(amount_text))
            except CallerFailed:
                out.rolled_back.add(UUID(op[3]))
            except (InsufficientCredits, Conflict):
                out.refused += 1

    await asyncio.gather(*(run(op) for op in plan))

    # the run exercised every path
    assert out.spent and out.refunded and out.granted and out.rolled_back and out.refused
    assert any(amount < 0 for _, amount in out.granted.values())

    async with pool.acquire() as conn:
        expected = dict.fromkeys(users, opening)
        for user_id, cost in out.spent.values():
            expected[user_id] -= cost
        for job, amount in out.refunded.items():
            user_id, cost = out.spent[job]  # only a committed debit is ever refunded
            assert amount == cost
            expected[user_id] += amount
        for user_id, amount in out.granted.values():
            expected[user_id] += amount
        for user_id in users:
            assert await assert_ledger_explains(conn, user_id) == expected[user_id]

        debits = await conn.fetch(
            "SELECT job_id, user_id, delta FROM credit_ledger"
            " WHERE delta < 0 AND job_id IS NOT NULL"
        )
        assert {r["job_id"]: (r["user_id"], -r["delta"]) for r in debits} == out.spent
        refunds = await conn.fetch(
            "SELECT job_id, delta FROM credit_ledger WHERE reason = 'refund'"
        )
        assert {r["job_id"]: r["delta"] for r in refunds} == out.refunded
        grants = await conn.fetch(
            "SELECT source_id, user_id, delta FROM credit_ledger WHERE source_id IS NOT NULL"
        )
        assert {r["source_id"]: (r["user_id"], r["delta"]) for r in grants} == out.granted
        assert not out.rolled_back & {r["job_id"] for r in debits}
        assert await credits.check(conn) == ([], 0)
