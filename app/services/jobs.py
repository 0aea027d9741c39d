"""A job's life after it was queued: claim, heartbeat, progress, complete, retry or fail, reap.

The worker loop (`app.services.worker`) decides what to do with an attempt; the writes are
here, each fenced on the attempt number, so an attempt whose lease ran out and was taken over
cannot touch the job again. A job that fails for good is refunded in the same transaction that
marks it failed (`_fail_and_refund`, the one path for the worker and the reaper alike).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from uuid import UUID

import asyncpg

from app.config import Settings
from app.core.job_errors import Failure
from app.db import jobs as jobs_db
from app.services import credits, imaging, pack_marks

log = logging.getLogger("atelier.worker")

MAX_RETRY_DELAY = 600.0  # seconds: backoff doubles per attempt, up to this
MAX_ERROR_LENGTH = 1000
REAP_BATCH = 100


class LostLease(Exception):
    """This attempt no longer holds its job: its lease ran out and the job moved on."""


async def claim(
    pool: asyncpg.Pool, worker_id: str, limit: int, lease_seconds: float
) -> list[asyncpg.Record]:
    """Up to `limit` ready jobs, now running and leased to `worker_id` (FOR UPDATE SKIP
    LOCKED: workers never claim the same job)."""
    async with pool.acquire() as conn:
        return await jobs_db.claim(conn, worker_id, limit, lease_seconds)


async def extend_leases(
    pool: asyncpg.Pool, held: list[tuple[UUID, int]], lease_seconds: float
) -> set[UUID]:
    """Heartbeat for every (job id, attempt) a worker runs; the ids it still holds."""
    async with pool.acquire() as conn:
        return await jobs_db.extend_leases(conn, held, lease_seconds)


async def set_progress(
    pool: asyncpg.Pool, job_id: UUID, attempt: int, progress: int, model: str | None = None
) -> None:
    """Record how far the attempt got (and the model that answered); LostLease if it lost it."""
    async with pool.acquire() as conn:
        if not await jobs_db.set_progress(conn, job_id, attempt, progress, model):
            raise LostLease


async def complete(
    pool: asyncpg.Pool,
    settings: Settings,
    job_id: UUID,
    attempt: int,
    *,
    key: str,
    png: imaging.Png,
    model: str,
    params: dict[str, Any],
    answered_shown: bool = True,
) -> None:
    """Record the stored image and mark the job completed (announcing progress 90, then
    100, and 60 first unless `answered_shown`: it was written already), in one statement;
    LostLease (and nothing written) if the attempt no longer holds the job."""
    image_id = uuid.uuid4()
    url = imaging.canonical_url(settings, key, image_id)
    pack_id = params.get("pack_id")
    async with pool.acquire() as conn:
        completed = await jobs_db.complete(
            conn,
            job_id,
            attempt,
            image_id=image_id,
            image_url=url,
            storage_key=key,
            model=model,
            visibility=params.get("visibility", "private"),
            width=png.width,
            height=png.height,
            pack_id=UUID(pack_id) if pack_id else None,
            announce_answered=not answered_shown,
        )
        if completed and pack_id:
            # As the icon joins it (that is when its icon_count moves), not when queued.
            await pack_marks.mark_updated(conn, [UUID(pack_id)])
    if not completed:
        raise LostLease


async def _fail_and_refund(
    conn: asyncpg.Connection, job_id: UUID, attempt: int | None, failure: Failure
) -> bool:
    """Failed for good: mark it and refund its debit, in one transaction. `attempt` fences
    the write (None for the reaper: then the lease must have run out). False if the job was
    not this caller's to fail, and then nothing is refunded."""
    async with conn.transaction():
        reason = failure.reason[:MAX_ERROR_LENGTH]
        if not await jobs_db.mark_failed(conn, job_id, attempt, reason, failure.code):
            return False
        await credits.refund(conn, job_id)
        return True


async def fail(pool: asyncpg.Pool, job_id: UUID, attempt: int, failure: Failure) -> bool:
    """The attempt ends the job as failed, refunded (see `_fail_and_refund`)."""
    async with pool.acquire() as conn:
        return await _fail_and_refund(conn, job_id, attempt, failure)


async def retry_or_fail(
    pool: asyncpg.Pool, settings: Settings, job_id: UUID, attempt: int, failure: Failure
) -> float | None:
    """Queue the job again after a backoff that doubles per attempt, and return the backoff
    in seconds; after MAX_ATTEMPTS attempts, fail and refund it instead (None), under the
    code of this last attempt's failure."""
    if attempt >= settings.max_attempts:
        final = Failure(failure.code, f"gave up after {attempt} attempts: {failure.reason}")
        await fail(pool, job_id, attempt, final)
        return None
    delay: float = min(settings.retry_base_seconds * 2 ** (attempt - 1), MAX_RETRY_DELAY)
    reason = failure.reason[:MAX_ERROR_LENGTH]
    async with pool.acquire() as conn:
        await jobs_db.release(
            conn, job_id, attempt, delay_seconds=delay, error=reason, error_code=failure.code
        )
    return delay


async def fate(pool: asyncpg.Pool, job_id: UUID) -> tuple[str, str | None] | None:
    """The job's status and its image's storage key, if it made one; None when the job is
    gone (with its user)."""
    async with pool.acquire() as conn:
        row = await jobs_db.fate(conn, job_id)
    return None if row is None else (row["status"], row["storage_key"])


async def hand_back(pool: asyncpg.Pool, job_id: UUID, attempt: int) -> None:
    """Put the job back in the queue at once (the worker is shutting down); when that
    fails, the lease runs out and the reaper takes it instead."""
    try:
        async with pool.acquire() as conn:
            await jobs_db.release(
                conn, job_id, attempt, delay_seconds=0, error=None, error_code=None
            )
        log.info("job %s handed back on shutdown", job_id)
    except Exception as exc:
        log.warning("could not hand back job %s: %r", job_id, exc)


async def reap(pool: asyncpg.Pool, max_attempts: int) -> tuple[int, list[tuple[UUID, int]]]:
    """Requeue jobs whose worker vanished; fail and refund those out of attempts. Returns
    how many it reaped, and (job, attempts) of those it failed: their attempts' results,
    if any were stored, are for the caller to remove.

    One short transaction per job: the statements re-check the expired lease, so two
    reapers never act on one job twice, and no batch holds many users' rows at once.
    """
    count = 0
    failed: list[tuple[UUID, int]] = []
    async with pool.acquire() as conn:
        for row in await jobs_db.expired(conn, REAP_BATCH):
            if row["attempts"] >= max_attempts:
                reason = f"gave up after {row['attempts']} attempts: the worker stopped responding"
                failure = Failure("worker_lost", reason)
                if await _fail_and_refund(conn, row["id"], None, failure):
                    count += 1
                    failed.append((row["id"], row["attempts"]))
            elif await jobs_db.requeue_expired(conn, row["id"], row["attempts"]):
                count += 1
    if count:
        log.info("reaped %d job(s) with expired leases", count)
    return count, failed
