"""The mobile app's own statements keep working on the database the service migrated."""

from __future__ import annotations

import asyncpg

from app.db.migrate import migrate
from tests.fakes.mobile_app import (
    LIVE_CREDITS,
    apply_baseline,
    run_mobile_app_statements,
    seed_live_rows,
)


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
