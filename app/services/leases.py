"""The leases of a worker's running attempts: renewed together, in one statement, every
third of the lease; an attempt whose job was taken over, or has ended, is cancelled (no use
spending on it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol
from uuid import UUID

import asyncpg

from app.services import jobs

log = logging.getLogger("atelier.worker")


class Held(Protocol):
    """An attempt at a job: the job's id and the attempt's number (what the lease fences)."""

    @property
    def id(self) -> UUID: ...

    @property
    def number(self) -> int: ...


async def keep(
    pool: asyncpg.Pool, lease_seconds: float, running: Mapping[asyncio.Task[None], Held]
) -> None:
    """For ever (the worker cancels it): `running` is the worker's own map of attempts, read
    afresh at every beat."""
    interval = lease_seconds / 3
    while True:
        await asyncio.sleep(interval)
        beat = list(running.items())
        if not beat:
            continue
        try:
            held = await jobs.extend_leases(
                pool, [(attempt.id, attempt.number) for _, attempt in beat], lease_seconds
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            # the next beat tries again; a dead lease keeper would let every lease lapse
            log.warning("renewing %d lease(s) failed: %r", len(beat), exc)
            continue
        except Exception:
            log.exception("renewing %d lease(s) failed", len(beat))
            continue
        for task, attempt in beat:
            if attempt.id not in held and not task.done():
                task.cancel()  # someone else has the job now, or it has ended
