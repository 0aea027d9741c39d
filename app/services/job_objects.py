"""The worker's dealings with storage for one attempt: the pack icons it sends along, the
result it stores (with retries), and the results no row will point at: its own and earlier
attempts' when it lost its lease or the job failed, earlier attempts' once it completed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any
from uuid import UUID

import asyncpg

from app.services import imaging, jobs
from app.services.providers.base import ReferenceImage
from app.services.storage.base import ObjectNotFound, Storage, StorageError, generation_key

log = logging.getLogger("atelier.worker")


async def references(
    storage: Storage, job_id: UUID, params: dict[str, Any]
) -> list[ReferenceImage]:
    """The images the job was asked to start from, then its pack's icons. ObjectNotFound for
    a reference deleted since (no later attempt can find it either), StorageError when the
    store could not be read."""
    found = [await imaging.load_reference(storage, key) for key in params.get("reference_keys", [])]
    return found + await pack_references(storage, job_id, params)


async def pack_references(
    storage: Storage, job_id: UUID, params: dict[str, Any]
) -> list[ReferenceImage]:
    """The pack icons chosen when the job was accepted, less any deleted since: they only
    carry the pack's look, so a missing one is no reason to fail the job."""
    found: list[ReferenceImage] = []
    for key in params.get("pack_reference_keys", []):
        try:
            found.append(await imaging.load_reference(storage, key))
        except ObjectNotFound:
            log.info("job %s: pack icon %s was deleted; sent without it", job_id, key)
    return found


async def put_with_retries(storage: Storage, key: str, data: bytes, retries: int) -> None:
    for retry in range(retries + 1):
        try:
            await storage.put(key, data, "image/png")
            return
        except StorageError:
            if retry == retries:
                raise
            await asyncio.sleep(min(0.2 * 2**retry, 5.0))


async def discard_unused(
    pool: asyncpg.Pool, storage: Storage, job_id: UUID, attempt: int, why: str
) -> None:
    """Attempt `attempt` ended without completing the job (`why`: it failed the job for
    good, or lost its lease to another attempt or to the erasure of the job's user):
    nothing will ever point at its object (generation_key), nor at what earlier attempts
    left, since none of them completed the job either (an attempt is claimed only while the
    job is pending). Those go too: no later attempt will remove them, and the erasure's
    sweep of the user's folders cannot find a key with no user id in it.

    A worker of the release before wrote every attempt to the first attempt's key, so
    during a rolling deploy that key is kept while it may still be used: when an image row
    points at it (one of them completed the job there), and while the job is pending or
    running (one of them may be storing there now; the attempt that ends the job removes
    it then). The job's state is read first; when it cannot be, everything is kept."""
    try:
        fate = await jobs.fate(pool, job_id)
    except Exception as exc:  # keeping is always safe; an object too many is only clutter
        log.warning("job %s: its results are kept, its state unread: %r", job_id, exc)
        return
    kept: set[str | None] = set()
    if fate is not None:  # None: gone with its user, and no attempt can complete it
        status, image_key = fate
        kept.add(image_key)
        if status in ("pending", "running"):
            kept.add(generation_key(job_id, 1))
    numbers = [n for n in range(attempt, 0, -1) if generation_key(job_id, n) not in kept]
    await _remove(storage, job_id, numbers, why)


async def remove_earlier_results(storage: Storage, job_id: UUID, attempt: int) -> None:
    """Best effort, once `attempt` completed the job: what earlier attempts stored and
    never completed with (a worker that crashed between its put and its completion)."""
    await _remove(storage, job_id, range(1, attempt), "an earlier attempt")


class Removals:
    """Removals of what attempts stored, each run in a task of its own: the lease keeper
    cancels an attempt once its job has ended (failed, completed or gone with its user),
    which must not stop the attempt's removal halfway, and the reaper's removals must not
    hold up the loop that claims (a bucket that hangs would stall it for minutes)."""

    def __init__(self, pool: asyncpg.Pool, storage: Storage) -> None:
        self.pool = pool
        self.storage = storage
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self, ended: list[tuple[UUID, int]], why: str, after: asyncio.Future[None] | None = None
    ) -> asyncio.Task[None]:
        """Remove what attempts 1..n of each (job, n) in `ended` stored (`discard_unused`),
        once `after` (a put still under way, which lands whatever became of its attempt) is
        done."""
        task = asyncio.create_task(self._run(ended, why, after), name=f"removal: {why}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(
        self, ended: list[tuple[UUID, int]], why: str, after: asyncio.Future[None] | None
    ) -> None:
        if after is not None:
            await asyncio.wait([after])
        for job_id, attempt in ended:
            try:
                await discard_unused(self.pool, self.storage, job_id, attempt, why)
            except Exception:  # best effort, as every removal: the next job's goes on
                log.exception("job %s: removing what its attempts stored failed", job_id)

    async def wait(self, grace: float) -> None:
        """Until the removals under way are done, for at most `grace` seconds."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)


def start_put(storage: Storage, key: str, data: bytes, retries: int) -> asyncio.Future[None]:
    """`put_with_retries` as a task of its own, for its attempt to await shielded: a put cut
    short (a deadline, the lease keeper) lands all the same (a boto3 call runs on in its
    thread), and a removal of what the attempt stored must wait for it."""
    put = asyncio.ensure_future(put_with_retries(storage, key, data, retries))
    put.add_done_callback(_quiet)
    return put


def _quiet(put: asyncio.Future[None]) -> None:
    """A put no attempt may await any more: its failure was news only to that attempt."""
    if not put.cancelled():
        put.exception()


async def _remove(storage: Storage, job_id: UUID, numbers: Iterable[int], whose: str) -> None:
    """Best effort: the results of the job's attempts `numbers`, stored by `whose`."""
    for number in numbers:
        key = generation_key(job_id, number)
        try:
            await storage.delete(key)
            log.info("job %s: removed %s (of %s), if it was there", job_id, key, whose)
        except StorageError as exc:
            log.warning("job %s: %s, stored by %s, remains: %s", job_id, key, whose, exc)
