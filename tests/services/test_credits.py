"""The credits: every balance change is one statement, and the ledger explains every
balance, also under concurrency.

Debits are made the one way production makes them: `app.services.generations.create`, the
service call POST /v1/generations makes (job, debit and ledger row in one statement).
Refunds go through `credits.refund`, which the worker calls in the transaction that marks a
job failed; in the randomized run a real reaper fails and refunds jobs a dead worker held.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import asyncpg
import pytest

from app.config import Settings
from app.db import jobs
from app.errors import Conflict, InsufficientCredits, NotFound
from app.services import credits
from app.services.providers.local import LocalProvider
from app.services.storage.base import Storage
from app.services.users import User
from app.services.worker import Worker
from tests.support.generations import add_user, create_job
from tests.support.locks import until_a_lock_wait

MakeSettings = Callable[..., Settings]


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


async def jobs_of(conn: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, status, cost FROM image_generation_jobs WHERE user_id = $1", user_id
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


# --- debit (a submission) ------------------------------------------------------------------


async def test_a_submission_debits_the_balance_and_records_one_ledger_row(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    user = await add_user(pool, "user_a", 5)

    job, created = await create_job(pool, make_settings(cost_generate=2), storage, user)

    assert created
    assert (job["status"], job["cost"], job["balance"]) == ("pending", 2, 5)
    async with pool.acquire() as conn:
        assert await balance_of(conn, "user_a") == 3
        rows = await ledger_of(conn, "user_a")
        assert [(r["delta"], r["reason"], r["job_id"], r["balance_after"]) for r in rows] == [
            (5, "signup", None, 5),
            (-2, "generate", job["id"], 3),
        ]


async def test_a_submission_beyond_the_balance_is_insufficient_credits_and_changes_nothing(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    user = await add_user(pool, "user_a", 5)

    with pytest.raises(InsufficientCredits) as caught:
        await create_job(pool, make_settings(cost_generate=6), storage, user)

    problem = caught.value.to_problem()
    assert caught.value.status == 402
    assert problem["balance"] == 5
    assert problem["cost"] == 6
    async with pool.acquire() as conn:
        assert await balance_of(conn, "user_a") == 5
        assert [r["reason"] for r in await ledger_of(conn, "user_a")] == ["signup"]
        assert await jobs_of(conn, "user_a") == []


async def test_a_submission_for_an_unknown_user_is_not_found(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    nobody = User("user_nobody", "nobody@example.test", datetime.now(UTC))
    with pytest.raises(NotFound):
        await create_job(pool, make_settings(cost_generate=1), storage, nobody)
    with pytest.raises(NotFound):  # a free kind (COST_*=0) still needs a real user
        await create_job(pool, make_settings(cost_generate=0), storage, nobody)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM credit_ledger") == 0
        assert await conn.fetchval("SELECT count(*) FROM image_generation_jobs") == 0


async def test_a_free_submission_queues_the_job_and_writes_no_ledger_row(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    user = await add_user(pool, "user_a", 5)

    job, created = await create_job(pool, make_settings(cost_generate=0), storage, user)

    assert created and job["cost"] == 0
    async with pool.acquire() as conn:
        assert await balance_of(conn, "user_a") == 5
        assert [r["reason"] for r in await ledger_of(conn, "user_a")] == ["signup"]
        assert [r["id"] for r in await jobs_of(conn, "user_a")] == [job["id"]]


async def test_submissions_never_overdraw_under_concurrency(
    pool: asyncpg.Pool, settings: Settings, storage: Storage
) -> None:
    assert settings.cost_generate == 1
    user = await add_user(pool, "user_a", 5)

    async def one_submission(n: int) -> asyncpg.Record | InsufficientCredits:
        try:
            job, created = await create_job(pool, settings, storage, user, f"fox {n}")
        except InsufficientCredits as exc:
            return exc
        assert created
        return job

    results = await asyncio.gather(*(one_submission(n) for n in range(200)))
    made = [r for r in results if not isinstance(r, InsufficientCredits)]
    refusals = [r for r in results if isinstance(r, InsufficientCredits)]
    assert len(made) == 5
    assert len(refusals) == 195
    for refusal in refusals:
        problem = refusal.to_problem()
        # a refusal says why: the balance it reports is short of the cost
        assert refusal.status == 402
        assert (problem["balance"], problem["cost"]) == (0, 1), problem
    async with pool.acquire() as conn:
        assert await assert_ledger_explains(conn, "user_a") == 0
        rows = await ledger_of(conn, "user_a")
        assert [r["reason"] for r in rows] == ["signup"] + ["generate"] * 5
        assert [r["balance_after"] for r in rows] == [5, 4, 3, 2, 1, 0]
        job_rows = await jobs_of(conn, "user_a")
        assert {r["id"] for r in job_rows} == {r["id"] for r in made}
        assert {r["job_id"] for r in rows[1:]} == {r["id"] for r in made}
        assert [(r["status"], r["cost"]) for r in job_rows] == [("pending", 1)] * 5
        assert await credits.check(conn) == ([], 0)


async def test_the_ledger_refuses_a_second_debit_for_a_job(
    pool: asyncpg.Pool, settings: Settings, storage: Storage
) -> None:
    user = await add_user(pool, "user_a", 5)
    job, _ = await create_job(pool, settings, storage, user)
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO credit_ledger (user_id, delta, reason, job_id, balance_after)"
                " VALUES ('user_a', -1, 'generate', $1, 3)",
                job["id"],
            )
        assert await assert_ledger_explains(conn, "user_a") == 4


# --- refund (credits.refund, as the worker calls it when a job fails for good) -------------


async def test_refund_gives_the_debit_back_once_when_called_twice(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    user = await add_user(pool, "user_a", 5)
    job, _ = await create_job(pool, make_settings(cost_generate=3), storage, user)
    async with pool.acquire() as conn:
        async with conn.transaction():
            assert await credits.refund(conn, job["id"]) == 3
        async with conn.transaction():
            assert await credits.refund(conn, job["id"]) is None
        assert await assert_ledger_explains(conn, "user_a") == 5
        rows = await ledger_of(conn, "user_a")
    assert [(r["delta"], r["reason"], r["job_id"]) for r in rows[1:]] == [
        (-3, "generate", job["id"]),
        (3, "refund", job["id"]),
    ]


async def test_refund_happens_once_under_concurrency(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    user = await add_user(pool, "user_a", 5)
    job, _ = await create_job(pool, make_settings(cost_generate=2), storage, user)

    async def one_refund() -> int | None:
        async with pool.acquire() as conn, conn.transaction():
            return await credits.refund(conn, job["id"])

    results = await asyncio.gather(*(one_refund() for _ in range(20)))
    assert sorted(results, key=lambda r: r is not None) == [None] * 19 + [2]
    async with pool.acquire() as conn:
        assert await assert_ledger_explains(conn, "user_a") == 5
        refunds = await conn.fetchval(
            "SELECT count(*) FROM credit_ledger WHERE job_id = $1 AND reason = 'refund'",
            job["id"],
        )
        assert refunds == 1


async def test_refund_of_a_job_that_was_never_debited_gives_nothing(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    user = await add_user(pool, "user_a", 5)
    # a job of a free kind (COST_*=0) was queued without a debit
    free_job, created = await create_job(pool, make_settings(cost_generate=0), storage, user)
    assert created
    async with pool.acquire() as conn:
        assert await credits.refund(conn, uuid.uuid4()) is None
        assert await credits.refund(conn, free_job["id"]) is None
        assert await assert_ledger_explains(conn, "user_a") == 5
        assert [r["reason"] for r in await ledger_of(conn, "user_a")] == ["signup"]


async def test_refund_is_undone_with_the_callers_transaction_and_can_happen_later(
    pool: asyncpg.Pool, settings: Settings, storage: Storage
) -> None:
    user = await add_user(pool, "user_a", 5)
    job, _ = await create_job(pool, settings, storage, user)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert await credits.refund(conn, job["id"]) == 1
        await tx.rollback()
        assert await assert_ledger_explains(conn, "user_a") == 4
        assert await credits.refund(conn, job["id"]) == 1
        assert await assert_ledger_explains(conn, "user_a") == 5


# --- grant ---------------------------------------------------------------------------------


async def test_grant_applies_once_per_source_id(db: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    await add_user(pool, "user_a", 5)
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
    await add_user(pool, "user_a", 5)

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
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await add_user(pool, "user_a", 5)
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


async def test_database_refuses_a_negative_balance(
    pool: asyncpg.Pool, settings: Settings, storage: Storage
) -> None:
    user = await add_user(pool, "user_a", 1)
    await create_job(pool, settings, storage, user)  # the last credit, spent the live way
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE users SET credits = credits - 1 WHERE id = 'user_a'")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE users SET credits = -1 WHERE id = 'user_a'")
        assert await assert_ledger_explains(conn, "user_a") == 0


async def test_check_names_a_balance_changed_behind_the_ledgers_back(
    pool: asyncpg.Pool, settings: Settings, storage: Storage
) -> None:
    honest = await add_user(pool, "user_honest", 5)
    await add_user(pool, "user_tampered", 5)
    await create_job(pool, settings, storage, honest)
    async with pool.acquire() as conn:
        assert await credits.check(conn) == ([], 0)
        await conn.execute("UPDATE users SET credits = credits + 3 WHERE id = 'user_tampered'")
        bad, unopened = await credits.check(conn)
    assert [(r["id"], r["credits"], r["total"]) for r in bad] == [("user_tampered", 8, 5)]
    assert unopened == 0


@dataclass
class Outcomes:
    spent: dict[UUID, tuple[str, int]] = field(default_factory=dict)  # job: (user, cost)
    replays: list[UUID] = field(default_factory=list)
    claimed: int = 0
    reaped: int = 0
    granted: dict[str, tuple[str, int]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)


async def test_random_concurrent_submissions_failures_and_grants_keep_every_balance_explained(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    rng = random.Random(20261123)
    user_ids = ["user_r0", "user_r1", "user_r2"]
    opening = 3
    # The kind's cost comes from settings, as in production; one job attempt, so the reaper
    # fails and refunds every job whose worker died.
    by_cost = {cost: make_settings(cost_generate=cost, max_attempts=1) for cost in (1, 2, 3)}
    users = {user_id: await add_user(pool, user_id, opening) for user_id in user_ids}
    reapers = [Worker(by_cost[1], pool, LocalProvider(), storage) for _ in range(2)]

    # A plan made up front from the seed; the order the operations land in is up to the race.
    plan: list[tuple[str, ...]] = []
    keyed: list[tuple[str, ...]] = []
    sources: list[str] = []
    for n in range(400):
        kind = rng.choices(["submit", "die", "reap", "grant"], weights=[5, 1, 1, 3])[0]
        if kind == "submit":
            if keyed and rng.random() < 0.15:
                plan.append(rng.choice(keyed))  # a retried request: same key, same body
                continue
            key = f"key_{n}" if rng.random() < 0.5 else ""
            op = ("submit", rng.choice(user_ids), str(rng.randint(1, 3)), f"fox {n}", key)
            if key:
                keyed.append(op)
            plan.append(op)
        elif kind == "die":
            plan.append(("die", str(rng.randint(1, 4))))
        elif kind == "reap":
            plan.append(("reap", str(rng.randrange(len(reapers)))))
        else:
            user_id = rng.choice(user_ids)
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
    rng.shuffle(plan)

    out = Outcomes()
    gate = asyncio.Semaphore(16)

    async def run(op: tuple[str, ...]) -> None:
        async with gate:
            if op[0] == "submit":
                _, user_id, cost, prompt, key = op
                try:
                    job, created = await create_job(
                        pool,
                        by_cost[int(cost)],
                        storage,
                        users[user_id],
                        prompt,
                        idempotency_key=key or None,
                    )
                except InsufficientCredits as exc:
                    problem = exc.to_problem()
                    assert problem["balance"] < problem["cost"] == int(cost), problem
                    out.refused["402"] += 1
                    return
                if created:
                    assert job["id"] not in out.spent
                    out.spent[job["id"]] = (user_id, int(cost))
                else:
                    out.replays.append(job["id"])
            elif op[0] == "die":
                # A worker claims ready jobs and dies: its lease has already run out. (Each
                # count is awaited before `+=`, which would read it before the await.)
                async with pool.acquire() as conn:
                    held = await jobs.claim(conn, "dead-worker", int(op[1]), -1.0)
                out.claimed += len(held)
            elif op[0] == "reap":
                reaped = await reapers[int(op[1])].reap()
                out.reaped += reaped
            else:
                _, user_id, amount_text, reason, source = op
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        result = await credits.grant(
                            conn, user_id, int(amount_text), reason, source
                        )
                except Conflict:
                    out.refused["409"] += 1
                    return
                assert result.balance >= 0
                if result.applied:
                    assert source not in out.granted
                    out.granted[source] = (user_id, int(amount_text))

    await asyncio.gather(*(run(op) for op in plan))
    out.reaped += await reapers[0].reap()  # what the dead workers still held (no race now)

    # the run exercised every path
    assert out.spent and out.replays and out.claimed and out.granted
    assert out.refused["402"]  # a 409 (a deduction that would not fit) depends on the race
    assert any(amount < 0 for _, amount in out.granted.values())

    async with pool.acquire() as conn:
        job_rows = await conn.fetch("SELECT id, status FROM image_generation_jobs")
        failed = {r["id"] for r in job_rows if r["status"] == "failed"}
        # every job a dead worker held failed, and was failed once among racing reapers
        assert len(failed) == out.claimed == out.reaped
        assert {r["id"] for r in job_rows} == out.spent.keys()
        assert {r["status"] for r in job_rows} <= {"pending", "failed"}
        assert set(out.replays) <= out.spent.keys()

        expected = dict.fromkeys(user_ids, opening)
        for job_id, (user_id, cost) in out.spent.items():
            expected[user_id] -= 0 if job_id in failed else cost
        for user_id, amount in out.granted.values():
            expected[user_id] += amount
        for user_id in user_ids:
            assert await assert_ledger_explains(conn, user_id) == expected[user_id]

        debits = await conn.fetch(
            "SELECT job_id, user_id, delta FROM credit_ledger"
            " WHERE delta < 0 AND job_id IS NOT NULL"
        )
        assert {r["job_id"]: (r["user_id"], -r["delta"]) for r in debits} == out.spent
        refunds = await conn.fetch(
            "SELECT job_id, delta FROM credit_ledger WHERE reason = 'refund'"
        )
        assert {r["job_id"]: r["delta"] for r in refunds} == {
            job_id: out.spent[job_id][1] for job_id in failed
        }
        grants = await conn.fetch(
            "SELECT source_id, user_id, delta FROM credit_ledger WHERE source_id IS NOT NULL"
        )
        assert {r["source_id"]: (r["user_id"], r["delta"]) for r in grants} == out.granted
        assert await credits.check(conn) == ([], 0)


async def test_a_grant_to_a_user_the_service_never_opened_opens_the_balance_first(
    db: asyncpg.Connection,
) -> None:
    # Created by the mobile app, never seen by the service: an administrator's top-up (or a
    # deduction) must leave a ledger that explains the whole balance, not just the change.
    await db.execute("INSERT INTO users (id, email, credits) VALUES ('user_app', 'a@x.test', 3)")
    added = await credits.grant(db, "user_app", 10, "admin", "adm_topup")
    assert added == credits.GrantResult(applied=True, balance=13)
    rows = await db.fetch(
        "SELECT reason, delta, balance_after FROM credit_ledger WHERE user_id = 'user_app'"
        " ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [("opening_balance", 3, 3), ("admin", 10, 13)]
    bad, unopened = await credits.check(db)
    assert [dict(r) for r in bad] == [] and unopened == 0


async def test_a_grant_that_waited_for_another_to_a_legacy_negative_balance_opens_nothing(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # A database the mobile app wrote before the service may hold a negative balance (the
    # constraint is then left NOT VALID). Such a balance is never opened; a grant that waited
    # behind another grant must see that grant's row and not open the balance it left.
    await db.execute("ALTER TABLE users DROP CONSTRAINT users_credits_nonnegative")
    await db.execute("INSERT INTO users (id, email, credits) VALUES ('user_old', 'o@x.test', -5)")
    await db.execute(
        "ALTER TABLE users ADD CONSTRAINT users_credits_nonnegative CHECK (credits >= 0) NOT VALID"
    )
    async with pool.acquire() as first:
        async with first.transaction():
            assert await credits.grant(first, "user_old", 10, "admin", "adm_1") == (
                credits.GrantResult(applied=True, balance=5)
            )

            async def second() -> credits.GrantResult:
                async with pool.acquire() as conn, conn.transaction():
                    return await credits.grant(conn, "user_old", 10, "admin", "adm_2")

            waiting = asyncio.ensure_future(second())
            await until_a_lock_wait(db, "the second grant waits for the first", waiting)
        assert await waiting == credits.GrantResult(applied=True, balance=15)
    rows = await db.fetch(
        "SELECT reason, delta, balance_after FROM credit_ledger WHERE user_id = 'user_old'"
        " ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [("admin", 10, 5), ("admin", 10, 15)]


class _AfterFirstStatement:
    """A connection that runs `between` once its first statement has answered: another
    session's commit lands exactly between two statements of the call under test."""

    def __init__(self, conn: asyncpg.Connection, between: Callable[[], Awaitable[None]]) -> None:
        self._conn = conn
        self._between: Callable[[], Awaitable[None]] | None = between

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name not in ("execute", "fetch", "fetchrow", "fetchval"):
            return attr

        async def statement(*args: Any, **kwargs: Any) -> Any:
            result = await attr(*args, **kwargs)
            between, self._between = self._between, None
            if between is not None:
                await between()
            return result

        return statement


async def test_a_user_row_that_appears_after_the_lock_found_none_is_not_opened_unlocked(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # open_balance's lock found no row (the mobile app's INSERT had not committed); the row
    # commits, and the app starts a spend, before the ledger is read. Writing the opening row
    # then, with no lock held, races the spend's deferred trigger for the one opening row:
    # inside a grant's transaction the two wait for each other (deadlock), or the app's
    # commit fails on the unique index.
    async with pool.acquire() as app, pool.acquire() as service:
        inserting = app.transaction()
        await inserting.start()
        await app.execute(
            "INSERT INTO users (id, email, credits) VALUES ('user_new', 'n@x.test', 3)"
        )
        spending = app.transaction()

        async def the_app_commits_and_spends() -> None:
            await inserting.commit()
            await spending.start()
            await app.execute("UPDATE users SET credits = credits - 1 WHERE id = 'user_new'")

        async def grant() -> credits.GrantResult:
            conn = cast(
                asyncpg.Connection, _AfterFirstStatement(service, the_app_commits_and_spends)
            )
            async with service.transaction():
                return await credits.grant(conn, "user_new", 5, "purchase", "cs_new")

        granting = asyncio.ensure_future(grant())
        await until_a_lock_wait(db, "the grant waits for the app's spend", granting)
        await spending.commit()
        assert await granting == credits.GrantResult(applied=True, balance=7)
    rows = await db.fetch(
        "SELECT reason, delta, balance_after FROM credit_ledger WHERE user_id = 'user_new'"
        " ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        ("opening_balance", 3, 3),
        ("app_spend", -1, 2),
        ("purchase", 5, 7),
    ]
    assert await credits.check(db) == ([], 0)
