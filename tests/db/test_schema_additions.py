"""What the migrations add to the shared `users` table, and the ledger's invariants."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from app.db.migrate import migrate
from tests.db import EXPECTED_VERSIONS, connected
from tests.fakes.mobile_app import LIVE_CREDITS, LIVE_SINCE, apply_baseline, seed_live_rows


async def test_users_gain_last_login_at_and_a_non_negative_balance(live_url: str) -> None:
    async with connected(live_url) as conn:
        await migrate(conn)
        column = await conn.fetchrow(
            """SELECT data_type, is_nullable, column_default FROM information_schema.columns
               WHERE table_name = 'users' AND column_name = 'last_login_at'"""
        )
        assert column is not None
        assert dict(column) == {
            "data_type": "timestamp with time zone",
            "is_nullable": "YES",
            "column_default": None,
        }
        assert (
            await conn.fetchval("SELECT count(*) FROM users WHERE last_login_at IS NOT NULL") == 0
        )
        assert await conn.fetchval(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'users_credits_nonnegative'"
        )

        with pytest.raises(asyncpg.CheckViolationError, match="users_credits_nonnegative"):
            await conn.execute("UPDATE users SET credits = -1 WHERE id = 'user_2live_alice'")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE users SET credits = credits - 1 WHERE id = 'user_2live_bob'")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO users (id, email, credits) VALUES ('user_neg', 'neg@x.test', -3)"
            )
        assert await conn.fetchval("SELECT credits FROM users WHERE id = 'user_2live_bob'") == 0


async def test_updating_a_user_bumps_updated_at(live_url: str) -> None:
    async with connected(live_url) as conn:
        await migrate(conn)
        row = await conn.fetchrow(
            """UPDATE users SET credits = credits + 1 WHERE id = 'user_2live_alice'
               RETURNING updated_at, now() AS now"""
        )
        assert row is not None
        assert row["updated_at"] == row["now"] != LIVE_SINCE
        # Even a client that sends its own (stale) value gets the time of the update.
        row = await conn.fetchrow(
            """UPDATE users SET email = 'alice@new.test', updated_at = $1
               WHERE id = 'user_2live_alice' RETURNING updated_at, now() AS now""",
            LIVE_SINCE,
        )
        assert row is not None
        assert row["updated_at"] == row["now"]
        untouched = await conn.fetchval("SELECT updated_at FROM users WHERE id = 'user_2live_bob'")
        assert untouched == LIVE_SINCE


async def test_a_live_negative_balance_does_not_stop_the_deploy(empty_url: str) -> None:
    """A live database may already hold a negative balance: migrating succeeds, the check
    is left NOT VALID (still enforced on every new write), and only that user stays without
    an opening balance (the ledger cannot hold a negative balance_after)."""
    async with connected(empty_url) as conn:
        await apply_baseline(conn)
        await seed_live_rows(conn)
        await conn.execute(
            "INSERT INTO users (id, email, credits) VALUES ('user_2live_debtor', 'd@x.test', -2)"
        )

        assert await migrate(conn) == EXPECTED_VERSIONS

        assert not await conn.fetchval(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'users_credits_nonnegative'"
        )
        opened = {r["user_id"] for r in await conn.fetch("SELECT user_id FROM credit_ledger")}
        assert opened == set(LIVE_CREDITS)
        assert await conn.fetchval("SELECT credits FROM users WHERE id = 'user_2live_debtor'") == -2
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE users SET credits = -1 WHERE id = 'user_2live_alice'")


# --- the ledger's invariants, kept by unique indexes ----------------------------------------


async def ledger_insert(conn: asyncpg.Connection, user_id: str, **fields: Any) -> None:
    names = ["user_id", *fields]
    values = [user_id, *fields.values()]
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await conn.execute(
        f"INSERT INTO credit_ledger ({', '.join(names)}) VALUES ({placeholders})", *values
    )


async def test_ledger_refuses_a_second_signup_or_opening_balance(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO users (id, email, credits) VALUES ('u1', 'u1@x.test', 5)")
    await ledger_insert(db, "u1", delta=5, reason="signup", balance_after=5)
    for reason in ("signup", "opening_balance"):
        with pytest.raises(asyncpg.UniqueViolationError, match="credit_ledger_user_opening_key"):
            await ledger_insert(db, "u1", delta=5, reason=reason, balance_after=5)
    # Other entries for the same user are not limited by it.
    await ledger_insert(db, "u1", delta=3, reason="admin", source_id="req-1", balance_after=8)
    assert await db.fetchval("SELECT count(*) FROM credit_ledger WHERE user_id = 'u1'") == 2


async def test_ledger_refuses_a_second_debit_or_refund_for_a_job(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO users (id, email, credits) VALUES ('u1', 'u1@x.test', 5)")
    job, other_job = uuid.uuid4(), uuid.uuid4()
    await ledger_insert(db, "u1", delta=-1, reason="generate", job_id=job, balance_after=4)
    # One debit and one refund per job may coexist, and other jobs are independent.
    await ledger_insert(db, "u1", delta=1, reason="refund", job_id=job, balance_after=5)
    await ledger_insert(db, "u1", delta=-1, reason="style", job_id=other_job, balance_after=4)

    with pytest.raises(asyncpg.UniqueViolationError, match="credit_ledger_job_debit_key"):
        await ledger_insert(db, "u1", delta=-1, reason="edit", job_id=job, balance_after=3)
    with pytest.raises(asyncpg.UniqueViolationError, match="credit_ledger_job_refund_key"):
        await ledger_insert(db, "u1", delta=1, reason="refund", job_id=job, balance_after=5)
    assert await db.fetchval("SELECT count(*) FROM credit_ledger") == 3


async def test_ledger_refuses_a_second_grant_for_a_source(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO users (id, email, credits) VALUES ('u1', 'u1@x.test', 5), ('u2', 'u2@x', 5)"
    )
    await ledger_insert(db, "u1", delta=50, reason="purchase", source_id="evt_1", balance_after=55)
    await ledger_insert(db, "u1", delta=50, reason="purchase", source_id="evt_2", balance_after=105)
    # The same event cannot be applied again, whatever it is recorded as or for whom.
    for user_id, reason in (("u1", "purchase"), ("u2", "subscription_grant"), ("u2", "admin")):
        with pytest.raises(asyncpg.UniqueViolationError, match="credit_ledger_source_key"):
            await ledger_insert(
                db, user_id, delta=50, reason=reason, source_id="evt_1", balance_after=55
            )
    assert await db.fetchval("SELECT count(*) FROM credit_ledger") == 2


async def test_ledger_rows_obey_their_checks(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO users (id, email, credits) VALUES ('u1', 'u1@x.test', 5)")
    refused: list[dict[str, Any]] = [
        {"delta": 1, "reason": "bonus", "source_id": "s1", "balance_after": 6},
        {"delta": 0, "reason": "admin", "source_id": "s2", "balance_after": 5},
        {"delta": -9, "reason": "admin", "source_id": "s3", "balance_after": -4},
        {"delta": -1, "reason": "generate", "balance_after": 4},
    ]
    for fields in refused:
        with pytest.raises(asyncpg.CheckViolationError):
            await ledger_insert(db, "u1", **fields)
    await ledger_insert(db, "u1", delta=0, reason="opening_balance", balance_after=0)
    assert await db.fetchval("SELECT count(*) FROM credit_ledger") == 1
