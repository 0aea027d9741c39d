"""The mobile app's own statements keep working on the database the service migrated."""

from __future__ import annotations

import asyncpg

from app.db.migrate import migrate
from tests.db import connected
from tests.fakes.mobile_app import (
    LIST_IMAGES,
    LIVE_CREDITS,
    READ_CREDITS,
    SPEND_CREDITS,
    apply_baseline,
    run_mobile_app_statements,
    run_mobile_app_statements_as_client,
    seed_live_rows,
)
from tests.support.postgrest import request


async def test_app_statements_work_on_the_baseline_they_were_written_for(
    empty_url: str,
) -> None:
    """The control: the statements are faithful to the app's schema before any migration,
    so a failure after migrating is the migrations' doing."""
    conn = await asyncpg.connect(empty_url)
    try:
        await apply_baseline(conn)
        await run_mobile_app_statements(conn)
    finally:
        await conn.close()


async def test_app_statements_work_on_an_empty_database_after_migrating(
    db: asyncpg.Connection,
) -> None:
    await run_mobile_app_statements(db)
    await run_mobile_app_statements(db)  # fresh ids: any number of runs on one database


async def test_app_statements_work_on_the_live_database_after_migrating(
    empty_url: str,
) -> None:
    conn = await asyncpg.connect(empty_url)
    try:
        await apply_baseline(conn)
        await seed_live_rows(conn)
        await run_mobile_app_statements(conn)  # the app was busy before the deploy…
        await migrate(conn)
        await run_mobile_app_statements(conn)  # …and keeps working after it

        # The live users are still the app's to read, with their balances as they were.
        for user_id, credits in LIVE_CREDITS.items():
            assert await conn.fetchval("SELECT credits FROM users WHERE id = $1", user_id) == (
                credits
            )
    finally:
        await conn.close()


async def test_app_statements_work_as_the_signed_in_user_on_the_live_database(
    empty_url: str,
) -> None:
    """After the deploy the phone's statements reach the tables through PostgREST as
    `authenticated`, under Row Level Security: they still work, and a live user still sees
    exactly the rows they had."""
    async with connected(empty_url) as conn:
        await apply_baseline(conn)
        await seed_live_rows(conn)
        await migrate(conn)
    # A connection of its own, as PostgREST's are (this one's statement cache predates the
    # migration's new columns, and a cached plan cannot be replanned inside a transaction).
    conn = await asyncpg.connect(empty_url)
    try:
        await run_mobile_app_statements_as_client(conn)

        async with request(conn, "authenticated", "user_2live_alice") as client:
            images = await client.fetch(LIST_IMAGES, "user_2live_alice")
            everyone = await client.fetch("SELECT user_id FROM generated_images")
            assert await client.fetchval(READ_CREDITS, "user_2live_alice") == 5
            assert await client.execute(SPEND_CREDITS, "user_2live_alice", 1) == "UPDATE 1"
        assert len(images) == 2
        assert {r["user_id"] for r in everyone} == {"user_2live_alice"}  # the rest private
        reasons = await conn.fetch(
            "SELECT reason, delta FROM credit_ledger WHERE user_id = 'user_2live_alice' ORDER BY id"
        )
        assert [tuple(r) for r in reasons] == [("opening_balance", 5), ("app_spend", -1)]
    finally:
        await conn.close()
