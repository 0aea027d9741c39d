"""What the billing migrations add: webhook_events (closed to client roles), Stripe's columns
on the shared subscriptions table (defaulted, so the app's statements still work), and the
ledger's purchase_reversal entries."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from app.db import pool as db_pool
from app.db import webhook_events
from app.db.migrate import migrate
from tests.db import connected
from tests.db.test_schema_additions import ledger_insert
from tests.fakes.mobile_app import apply_baseline, run_mobile_app_statements, seed_live_rows
from tests.support.locks import until_a_lock_wait


async def test_webhook_events_are_stored_once_per_provider_and_id(db: asyncpg.Connection) -> None:
    insert = (
        "INSERT INTO webhook_events (provider, event_id, type, payload)"
        " VALUES ($1, $2, 'x', '{}'::jsonb)"
    )
    await db.execute(insert, "stripe", "evt_1")
    await db.execute(insert, "clerk", "evt_1")  # ids are per provider
    with pytest.raises(asyncpg.UniqueViolationError, match="webhook_events_pkey"):
        await db.execute(insert, "stripe", "evt_1")
    with pytest.raises(asyncpg.CheckViolationError, match="webhook_events_provider_check"):
        await db.execute(insert, "paypal", "evt_2")
    row = await db.fetchrow("SELECT received_at, processed_at, error, attempts FROM webhook_events")
    assert row is not None and row["received_at"] is not None
    assert (row["processed_at"], row["error"], row["attempts"]) == (None, None, 0)


async def test_an_event_stored_by_another_request_at_the_same_moment_is_found_not_lost(
    db_url: str, db: asyncpg.Connection
) -> None:
    """The second of two requests storing one event waits for the first to commit, and then
    reads the row the first stored (a statement whose snapshot predates that commit found
    nothing: three Stripe deliveries at once made one of them a 500)."""
    first = await asyncpg.connect(db_url)
    second = await asyncpg.connect(db_url)
    try:
        for conn in (first, second):
            await db_pool.init_connection(conn)  # the service's jsonb codec
        async with first.transaction():
            stored = await webhook_events.insert(first, "stripe", "evt_race", "x", {})
            assert stored["inserted"]
            storing = asyncio.create_task(
                webhook_events.insert(second, "stripe", "evt_race", "x", {})
            )
            await until_a_lock_wait(db, "the second insert to wait for the first", storing)
        found = await asyncio.wait_for(storing, 30)
    finally:
        await first.close()
        await second.close()
    assert (found["inserted"], found["processed_at"]) == (False, None)
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 1


async def test_webhook_events_are_closed_to_a_client_role(db: asyncpg.Connection) -> None:
    """RLS is on with no policy: a role such as Supabase's `authenticated`, even one granted
    the table, reads and writes nothing."""
    assert await db.fetchval(
        "SELECT relrowsecurity FROM pg_class WHERE oid = 'webhook_events'::regclass"
    )
    assert (
        await db.fetchval("SELECT count(*) FROM pg_policies WHERE tablename = 'webhook_events'")
        == 0
    )
    await db.execute(
        "INSERT INTO webhook_events (provider, event_id, type, payload)"
        " VALUES ('stripe', 'evt_secret', 'x', '{}'::jsonb)"
    )
    role = f"atelier_probe_{uuid.uuid4().hex[:8]}"
    await db.execute(f'CREATE ROLE "{role}" NOLOGIN NOBYPASSRLS')
    try:
        await db.execute(f'GRANT SELECT, INSERT, UPDATE ON webhook_events TO "{role}"')
        async with db.transaction():
            await db.execute(f'SET LOCAL ROLE "{role}"')
            assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0
            updated = await db.execute("UPDATE webhook_events SET error = 'x'")
            assert updated == "UPDATE 0"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await db.execute(
                    "INSERT INTO webhook_events (provider, event_id, type, payload)"
                    " VALUES ('stripe', 'evt_mine', 'x', '{}'::jsonb)"
                )
    finally:
        await db.execute(f'REVOKE ALL ON webhook_events FROM "{role}"')
        await db.execute(f'DROP ROLE "{role}"')


async def test_subscriptions_gain_only_defaulted_columns_and_the_app_keeps_working(
    empty_url: str,
) -> None:
    async with connected(empty_url) as conn:
        await apply_baseline(conn)
        await seed_live_rows(conn)
        before = await conn.fetch("SELECT * FROM subscriptions ORDER BY id")
        assert before, "the live database holds the app's subscriptions"
        await migrate(conn)
        columns = await conn.fetch(
            """SELECT column_name, is_nullable, column_default FROM information_schema.columns
               WHERE table_name = 'subscriptions'
                 AND column_name IN ('stripe_status', 'cancel_at_period_end', 'stripe_event_at')
               ORDER BY column_name"""
        )
        assert [(c["column_name"], c["is_nullable"], c["column_default"]) for c in columns] == [
            ("cancel_at_period_end", "NO", "false"),
            ("stripe_event_at", "YES", None),
            ("stripe_status", "YES", None),
        ]
        after = await conn.fetch("SELECT * FROM subscriptions ORDER BY id")
        assert [{k: r[k] for k in b.keys()} for r, b in zip(after, before, strict=True)] == [
            dict(b) for b in before
        ]
        await run_mobile_app_statements(conn)


async def test_purchase_reversals_take_back_or_record_nothing_but_never_add(
    db: asyncpg.Connection,
) -> None:
    await db.execute("INSERT INTO users (id, email, credits) VALUES ('u1', 'u1@x.test', 5)")
    accepted: list[dict[str, Any]] = [
        {"delta": -5, "reason": "purchase_reversal", "source_id": "r1", "balance_after": 0},
        {"delta": 0, "reason": "purchase_reversal", "source_id": "r2", "balance_after": 0},
    ]
    for fields in accepted:
        await ledger_insert(db, "u1", **fields)
    refused: list[dict[str, Any]] = [
        {"delta": 5, "reason": "purchase_reversal", "source_id": "r3", "balance_after": 5},
        {"delta": 0, "reason": "purchase", "source_id": "r4", "balance_after": 0},
    ]
    for fields in refused:
        with pytest.raises(asyncpg.CheckViolationError):
            await ledger_insert(db, "u1", **fields)
