"""What a job's attempts stored and no row will point at, removed when the job ends without
them, whatever happens meanwhile: a removal the lease keeper would cut short, a store so
slow the reaper's removals would hold up claiming, an attempt of a worker of the release
before storing under the first key, and an attempt cancelled once its job moved on whose
put lands afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from uuid import UUID

import asyncpg
import pytest

from app.config import Settings
from app.db import jobs as jobs_db
from app.services import jobs
from app.services.providers.local import LocalProvider
from app.services.storage.base import Storage, generation_key
from app.services.worker import Worker
from tests.fakes.flaky_storage import FlakyStorage
from tests.fakes.gemini import png_for_prompt
from tests.support.generations import add_user
from tests.support.polling import wait_until
from tests.worker.conftest import (
    Refusing,
    assert_invariants,
    claim_as_dead_worker,
    complete_as_old_release,
    expire_lease,
    job_row,
    submit,
    wait_for_end,
    worker_running,
)

MakeSettings = Callable[..., Settings]
ALICE = "user_alice"


class _SlowStore(FlakyStorage):
    """A store that works, with deletes that wait for `deletes` (set: at once) and take
    `delete_seconds`, and puts that land only once `lands` is set: the object arrives
    whatever became of the caller, as a boto3 call running on in its thread does."""

    def __init__(self, inner: Storage, delete_seconds: float = 0.0) -> None:
        super().__init__(inner, put_failures=0)
        self.delete_seconds = delete_seconds
        self.deletes = asyncio.Event()
        self.deletes.set()
        self.lands = asyncio.Event()
        self.lands.set()
        self.putting = asyncio.Event()
        self.landing: set[asyncio.Task[None]] = set()

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.putting.set()

        async def land() -> None:
            await self.lands.wait()
            await self.inner.put(key, data, content_type)

        landing = asyncio.create_task(land())
        self.landing.add(landing)
        await asyncio.shield(landing)

    async def delete(self, key: str) -> None:
        await self.deletes.wait()
        await asyncio.sleep(self.delete_seconds)
        await self.inner.delete(key)


async def _dead_first_attempt(pool: asyncpg.Pool, storage: Storage, job_id: UUID) -> str:
    """Attempt 1's worker stored its result and vanished; the reaper queued the job again."""
    [row] = await claim_as_dead_worker(pool, 10)
    assert row["id"] == job_id
    await expire_lease(pool, job_id)
    key = generation_key(job_id, 1)
    await storage.put(key, png_for_prompt("crashed", size=8), "image/png")
    assert await jobs.reap(pool, max_attempts=3) == (1, [])
    return key


async def _status(pool: asyncpg.Pool, job_id: UUID) -> str:
    row = await job_row(pool, job_id)
    return str(row["status"])


def _jobs_running() -> bool:
    return any(t.get_name().startswith("job-") for t in asyncio.all_tasks())


async def test_the_lease_keeper_does_not_cut_short_what_a_failed_job_removes(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    """The attempt fails the job for good and removes what attempts 2 and 1 stored, on a
    store that takes a while for each: the job is no longer running, so the lease keeper's
    next beat cancels the attempt's task, which must not stop the removal halfway."""
    settings = make_settings(worker_poll_seconds=0.1, job_lease_seconds=1)
    user = await add_user(pool, ALICE, credits=1)
    job_id = await submit(pool, settings, storage, user, "a lantern on a slow store")
    first_key = await _dead_first_attempt(pool, storage, job_id)
    slow = _SlowStore(storage, delete_seconds=1.0)  # three of the keeper's beats
    async with worker_running(Worker(settings, pool, Refusing(), slow)):
        done = await wait_for_end(pool, [job_id])
        assert (done[job_id]["status"], done[job_id]["attempts"]) == ("failed", 2)
        await wait_until(lambda: not _jobs_running(), "the attempt to end")
        await wait_until(lambda: _gone(storage, first_key), "attempt 1's object to go")
    await assert_invariants(pool, storage)


async def _gone(storage: Storage, key: str) -> bool:
    return not await storage.exists(key)


async def test_a_store_that_hangs_on_the_reapers_removals_does_not_hold_up_claiming(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    """The reaper fails a dead worker's job and removes what it stored, on a store whose
    deletes hang: the loop goes on claiming meanwhile (a queued job completes), and the
    object goes once the store answers."""
    settings = make_settings(worker_poll_seconds=0.1, max_attempts=1)
    user = await add_user(pool, ALICE, credits=2)
    dead = await submit(pool, settings, storage, user, "a lantern on a dead worker")
    await claim_as_dead_worker(pool, 10)
    await expire_lease(pool, dead)
    dead_key = generation_key(dead, 1)
    await storage.put(dead_key, png_for_prompt("crashed", size=8), "image/png")
    queued = await submit(pool, settings, storage, user, "a lantern waiting its turn")
    hung = _SlowStore(storage)
    hung.deletes.clear()
    async with worker_running(Worker(settings, pool, LocalProvider(), hung)):
        try:
            done = await wait_for_end(pool, [queued], seconds=10)
        finally:
            hung.deletes.set()
        assert done[queued]["status"] == "completed"
        assert await _status(pool, dead) == "failed"
        await wait_until(lambda: _gone(storage, dead_key), "the dead attempt's object to go")
    await assert_invariants(pool, storage)


async def test_a_stale_attempt_failing_leaves_the_first_key_an_old_release_attempt_stores(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    """During a rolling deploy: attempt 2 (this release) lost its lease while its provider
    was slow, and attempt 3 runs on a worker of the release before, which writes every
    attempt to the first attempt's key. Attempt 2's refusal comes before attempt 3 completes:
    its failure is fenced out, and what it removes must not include the object attempt 3
    is about to complete with."""
    settings = make_settings(worker_poll_seconds=0.1, worker_concurrency=1)
    user = await add_user(pool, ALICE, credits=1)
    job_id = await submit(pool, settings, storage, user, "a lantern across releases")
    first_key = await _dead_first_attempt(pool, storage, job_id)
    provider = Refusing()
    provider.release.clear()
    async with worker_running(Worker(settings, pool, provider, storage)):
        await asyncio.wait_for(provider.asked.wait(), 10)
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE image_generation_jobs SET lease_until = now() - interval '1 second'"
                " WHERE id = $1 AND attempts = 2",
                job_id,
            )
        assert await jobs.reap(pool, max_attempts=3) == (1, [])
        async with pool.acquire() as conn:
            [third] = await jobs_db.claim(conn, "old-release-worker", 10, 60)
        assert third["attempts"] == 3
        await storage.put(first_key, png_for_prompt("old release", size=8), "image/png")
        provider.release.set()  # attempt 2 is refused, and fails the job: fenced out
        await wait_until(lambda: provider.asked.is_set() and not _jobs_running(), "attempt 2")
    assert await _status(pool, job_id) == "running"  # attempt 3's
    async with pool.acquire() as conn:
        completed = await complete_as_old_release(conn, job_id, 3, first_key)
    assert completed
    assert await storage.exists(first_key), "the completed job's image has no object"
    await assert_invariants(pool, storage)


async def test_an_attempt_cancelled_once_its_job_failed_removes_what_its_put_left(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker cut off from the database while it stores: its lease runs out and the
    reaper fails the job (removing what was there: nothing yet). The put lands afterwards;
    back in touch, the lease keeper finds the job ended and cancels the attempt. Its object
    is one no row will point at: it goes too."""
    settings = make_settings(worker_poll_seconds=0.1, job_lease_seconds=1, max_attempts=1)
    user = await add_user(pool, ALICE, credits=1)
    job_id = await submit(pool, settings, storage, user, "a lantern stored too late")
    slow = _SlowStore(storage)
    slow.lands.clear()
    renew = jobs.extend_leases

    async def cut_off(*args: object, **kwargs: object) -> set[UUID]:
        raise OSError("the database is unreachable")

    try:
        async with worker_running(Worker(settings, pool, LocalProvider(), slow)):
            await asyncio.wait_for(slow.putting.wait(), 10)
            monkeypatch.setattr(jobs, "extend_leases", cut_off)
            await wait_until(lambda: _failed(pool, job_id), "the reaper to fail the job")
            monkeypatch.setattr(jobs, "extend_leases", renew)
            await wait_until(lambda: not _jobs_running(), "the keeper to cancel the attempt")
            slow.lands.set()
            key = generation_key(job_id, 1)
            await wait_until(lambda: _landed(slow), "the put to land")
            await wait_until(lambda: _gone(storage, key), "the late object to go")
    finally:
        slow.lands.set()
    await assert_invariants(pool, storage)


async def _failed(pool: asyncpg.Pool, job_id: UUID) -> bool:
    return await _status(pool, job_id) == "failed"


def _landed(store: _SlowStore) -> bool:
    return all(task.done() for task in store.landing) and bool(store.landing)
