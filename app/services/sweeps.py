"""The worker's upkeep of what the database keeps only for a while.

Each sweep runs as the worker starts and then hourly, in a task beside its claim loop, so a
first sweep through a large backlog holds no job back. One that fails is logged and tried
again the next hour; the others run all the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import asyncpg

from app.config import Settings
from app.services import webhook_endpoints, webhooks

log = logging.getLogger("atelier.sweeps")

SWEEP_EVERY_SECONDS = 3600.0


async def hourly(pool: asyncpg.Pool, settings: Settings) -> None:
    """Every sweep at once and then hourly, for ever (the worker cancels it)."""
    while True:
        days = settings.webhook_event_payload_days
        await _logged("dropping old webhook payloads", webhooks.expire_payloads(pool, days))
        await _logged(
            "erasing replaced webhook secrets", webhook_endpoints.forget_replaced_secrets(pool)
        )
        await asyncio.sleep(SWEEP_EVERY_SECONDS)


async def _logged(what: str, sweep: Awaitable[int]) -> None:
    try:
        await sweep
    except Exception:
        log.exception("%s failed; trying again in an hour", what)
