"""What a job's attempts stored and no row will point at, removed when the job ends without
them, and only that: an attempt of a worker of the release before may be storing under the
first key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from uuid import UUID

import asyncpg

from app.config import Settings
from app.db import jobs as jobs_db
from app.services import jobs
from app.services.providers.base import ContentRefused, ImageRequest, ImageResult
from app.services.providers.local import LocalProvider
from app.services.storage.base import Storage, generation_key
from app.services.worker import Worker
from tests.fakes.gemini import png_for_prompt
from tests.support.generations import add_user
from tests.support.polling import wait_until
from tests.worker.conftest import assert_invariants, job_row, submit, worker_running

MakeSettings = Callable[..., Settings]
ALICE = "user_alice"


class _Refusing(LocalProvider):
    """Refuses every prompt (final), once `release` is set; `asked` says it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def generate(self, request: ImageRequest) -> ImageResult:
        self.asked.set()
        await self.release.wait()
        raise ContentRefused("blocked by the safety filter")


async def _dead_first_attempt(pool: asyncpg.Pool, storage: Storage, job_id: UUID) -> str:
    """Attempt 1's worker stored its result and vanished; the reaper queued the job again."""
    async with pool.acquire() as conn:
        [row] = await jobs_db.claim(conn, "dead-worker", 10, 60)
        assert row["id"] == job_id
        await conn.execute(
            "UPDATE image_generation_jobs SET lease_until = now() - interval '1 second'"
            " WHERE id = $1",
            job_id,
        )
    key = generation_key(job_id, 1)
    await storage.put(key, png_for_prompt("crashed", size=8), "image/png")
    assert await jobs.reap(pool, max_attempts=3) == (1, [])
    return key


async def _status(pool: asyncpg.Pool, job_id: UUID) -> str:
    row = await job_row(pool, job_id)
    return str(row["status"])


def _jobs_running() -> bool:
    return any(t.get_name().startswith("job-") for t in asyncio.all_tasks())


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
    provider = _Refusing()
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
        completed = await jobs_db.complete(
            conn,
            job_id,
            3,
            image_id=uuid.uuid4(),
            image_url="http://x.test/old",
            storage_key=first_key,
            model="old",
            visibility="private",
            width=8,
            height=8,
            pack_id=None,
        )
    assert completed
    assert await storage.exists(first_key), "the completed job's image has no object"
    await assert_invariants(pool, storage)
