"""How a test knows a concurrent statement really is blocked behind a transaction it holds
open: some other session of the test's database waits for a lock."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tests.support.polling import wait_until


async def until_a_lock_wait(
    db: asyncpg.Connection, what: str, waiter: asyncio.Future[Any] | None = None
) -> None:
    """Until a session of `db`'s database other than `db` waits for a lock; fail naming
    `what`. `waiter`, the task that should be the one waiting, must not end first."""

    async def waiting() -> bool:
        count = await db.fetchval(
            """
            SELECT count(*) FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
              AND wait_event_type = 'Lock'
            """
        )
        if count:
            return True
        assert waiter is None or not waiter.done(), f"it did not wait: {waiter.result()!r}"
        return False

    await wait_until(waiting, what, interval=0.02)
