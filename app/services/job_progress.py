"""How far an attempt got, as its job's progress shows it: 10 (claimed) up to 59 as the
provider reports, 60 once it answered, 90 stored, 100 completed.

Each write is a round trip and a commit, so what is not worth one is not written:
- a provider's reports only when they move the number forward;
- 60 (answered) only when storing the image takes longer than ANSWERED_AFTER_SECONDS.
  Otherwise the statement that completes the job announces 60 along with 90 and 100,
  so a stream still sees every step; only the row goes from 10 straight to 100, as it
  went from 60 to 100 before.
Every write is fenced on the attempt, as the worker's others are (`app.services.jobs`).
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

import asyncpg

from app.services import jobs
from app.services.providers.base import ProgressHook

# How long storing the answer may take before its progress (60) is written on its own.
ANSWERED_AFTER_SECONDS = 0.1

log = logging.getLogger("atelier.worker")


def provider_hook(pool: asyncpg.Pool, job_id: UUID, attempt: int) -> ProgressHook:
    """What the provider reports (0..1) as the job's progress between 10 (claimed) and 60
    (answered), written only when it moves forward; LostLease if the attempt lost the job."""
    shown = 10

    async def report(fraction: float) -> None:
        nonlocal shown
        progress = min(59, 10 + int(fraction * 50))
        if progress > shown:
            shown = progress
            await jobs.set_progress(pool, job_id, attempt, progress)

    return report


class Answered:
    """Progress 60 for an attempt whose provider answered, written only if the attempt is
    still storing the image ANSWERED_AFTER_SECONDS later. `settle()` before the attempt's
    next write says whether it was (then the completion does not announce it again)."""

    def __init__(self, pool: asyncpg.Pool, job_id: UUID, attempt: int, model: str) -> None:
        self._write = (pool, job_id, attempt, model)
        self._task: asyncio.Task[bool | None] | None = None
        self._timer = asyncio.get_running_loop().call_later(ANSWERED_AFTER_SECONDS, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(self._written())

    async def _written(self) -> bool | None:
        """True once written, False if the job is gone from this attempt, None if the write
        failed otherwise: it is optional (the completion announces 60 when it was not
        written), so a database hiccup here must not cost the stored answer."""
        pool, job_id, attempt, model = self._write
        try:
            await jobs.set_progress(pool, job_id, attempt, 60, model)
        except jobs.LostLease:
            return False
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("job %s: progress 60 not written (%r); the completion says it", job_id, exc)
            return None
        return True

    async def settle(self) -> bool:
        """Stop the timer; wait for a write already under way. True if 60 was written;
        LostLease if the write found the job gone from this attempt."""
        self._timer.cancel()
        if self._task is None:
            return False
        written = await asyncio.shield(self._task)
        if written is False:
            raise jobs.LostLease
        return written is True

    def cancel(self) -> None:
        """No 60 from now on (the attempt ends, one way or another). A write under way
        finishes on its own: fenced, it changes nothing once the job moved on, and what it
        raises is not left unretrieved."""
        self._timer.cancel()
        if self._task is not None:
            self._task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[bool | None]) -> None:
    if not task.cancelled():
        task.exception()
