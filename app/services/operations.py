"""What the operations routes ask of the service: is it ready for traffic?"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from app.db import migrate
from app.errors import ServiceUnavailable

log = logging.getLogger("atelier.health")

READY_TIMEOUT_SECONDS = 3


async def check_ready(pool: asyncpg.Pool) -> None:
    """Return if the database answers and every migration on disk is applied; else raise
    ServiceUnavailable saying what is missing."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with pool.acquire() as conn:
                todo = await migrate.pending(conn)
    except (OSError, TimeoutError, migrate.MigrationError) as exc:
        log.warning("not ready: %s", exc)
        raise ServiceUnavailable(f"Database not ready: {exc}") from exc
    except Exception as exc:  # asyncpg raises many kinds; any of them means not ready
        log.warning("not ready: %r", exc)
        raise ServiceUnavailable("Database not ready.") from exc
    if todo:
        names = ", ".join(f"{m.version}_{m.name}" for m in todo)
        raise ServiceUnavailable(f"Migrations not applied: {names}. Run `atelier migrate`.")
