"""Helpers for the worker tests: a NOTIFY hub, jobs created the way the API creates them
(debit and ledger included; tests/support/generations.py), a worker run as a task, and the
invariants every test ends by checking: the books balance, every image row's object exists,
and every job is charged once and refunded only if it failed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg
import pytest

from app.config import Settings
from app.db import jobs as jobs_db
from app.db import pool as db_pool
from app.services import credits
from app.services.providers.base import ContentRefused, ImageRequest, ImageResult
from app.services.providers.local import LocalProvider
from app.services.realtime import Hub
from app.services.storage.base import Storage, generation_key
from app.services.users import User
from app.services.worker import Worker
from tests.support.generations import create_job
from tests.support.polling import DEADLINE_SECONDS, wait_until

TERMINAL = ("completed", "failed")


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[Hub]:
    started = Hub(lambda: db_pool.connect(settings))
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


# -- jobs -----------------------------------------------------------------------------------


async def submit(
    pool: asyncpg.Pool,
    settings: Settings,
    storage: Storage,
    user: User,
    prompt: str,
    *,
    model: str | None = None,
) -> UUID:
    """Ask for an image as POST /v1/generations does; the new job's id."""
    row, created = await create_job(pool, settings, storage, user, prompt, model=model)
    assert created
    job_id: UUID = row["id"]
    return job_id


async def job_row(pool: asyncpg.Pool, job_id: UUID) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """
            SELECT id, user_id, status, progress, attempts, worker_id, lease_until, model,
                   error_message, error_code, image_id, output_image_url, available_at
            FROM image_generation_jobs WHERE id = $1
            """,
            job_id,
        )
    assert row is not None
    return row


async def jobs_by_id(pool: asyncpg.Pool, job_ids: Iterable[UUID]) -> dict[UUID, asyncpg.Record]:
    return {job_id: await job_row(pool, job_id) for job_id in job_ids}


async def wait_for_end(
    pool: asyncpg.Pool, job_ids: Iterable[UUID], seconds: float = DEADLINE_SECONDS
) -> dict[UUID, asyncpg.Record]:
    """The jobs once every one of them is completed or failed."""
    ids = list(job_ids)

    async def ended() -> bool:
        async with pool.acquire() as conn:
            left: int = await conn.fetchval(
                """
                SELECT count(*) FROM image_generation_jobs
                WHERE id = ANY($1::uuid[]) AND status NOT IN ('completed', 'failed')
                """,
                ids,
            )
        return left == 0

    await wait_until(ended, f"{len(ids)} job(s) to end", seconds)
    return await jobs_by_id(pool, ids)


async def ledger_of(pool: asyncpg.Pool, job_id: UUID) -> list[tuple[str, int]]:
    """The job's ledger rows as (reason, delta), oldest first."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT reason, delta FROM credit_ledger WHERE job_id = $1 ORDER BY id", job_id
        )
    return [(r["reason"], r["delta"]) for r in rows]


async def images_of(pool: asyncpg.Pool, job_id: UUID) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT id, storage_key, model, width, height FROM generated_images WHERE job_id = $1",
            job_id,
        )
    return rows


async def balance(pool: asyncpg.Pool, user_id: str) -> int:
    async with pool.acquire() as conn:
        value: int = await conn.fetchval("SELECT credits FROM users WHERE id = $1", user_id)
    return value


class Rounds:
    """A worker's loop seen from outside, so a test waits for rounds of it instead of
    sleeping: what each claim round found (and whether a job was still running as it
    began), and how many reaper rounds ran."""

    def __init__(self, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.claims: list[tuple[bool, int]] = []
        self.reaps = 0
        self.claiming = False
        claim, reap = worker._claim_batch, worker.reap

        async def counted_claim() -> int:
            busy = _jobs_running()
            self.claiming = True
            try:
                found = await claim()
            finally:
                self.claiming = False
            self.claims.append((busy, found))
            return found

        async def counted_reap() -> int:
            count = await reap()
            self.reaps += 1
            return count

        monkeypatch.setattr(worker, "_claim_batch", counted_claim)
        monkeypatch.setattr(worker, "reap", counted_reap)

    def idle(self) -> bool:
        """The worker has claimed at least once, is not claiming now and runs no job: it is
        in its wait (or on its way there), until a NOTIFY, its next poll or its next reaper
        round. With a hub, the end of its last job does not start another claim round (the
        last one left the queue empty, and a job queued since says so), so "the last round
        found nothing" would only come with the next reaper round."""
        return bool(self.claims) and not self.claiming and not _jobs_running()


def _jobs_running() -> bool:
    return any(t.get_name().startswith("job-") for t in asyncio.all_tasks())


@asynccontextmanager
async def worker_running(worker: Worker) -> AsyncIterator[Worker]:
    """`worker.run` as a task; on the way out it is stopped (drain and hand back included)
    and its provider closed."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop), name=f"worker {worker.worker_id}")
    try:
        yield worker
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, DEADLINE_SECONDS)
        finally:
            await worker.provider.aclose()


async def assert_invariants(pool: asyncpg.Pool, storage: Storage) -> None:
    """What must hold whatever happened: the ledger explains every balance; every job was
    charged once; a completed job has exactly its one image, a failed one none and exactly
    one refund, an unfinished one no refund; every image row's object is in the store; an
    ended job left no other object under its attempts' keys."""
    async with pool.acquire() as conn:
        mismatched, _ = await credits.check(conn)
        jobs = await conn.fetch(
            """
            SELECT j.id, j.status, j.image_id, j.attempts,
                   (SELECT i.storage_key FROM generated_images i
                    WHERE i.id = j.image_id) AS image_key,
                   (SELECT count(*) FROM credit_ledger l
                    WHERE l.job_id = j.id AND l.delta < 0) AS debits,
                   (SELECT count(*) FROM credit_ledger l
                    WHERE l.job_id = j.id AND l.reason = 'refund') AS refunds,
                   (SELECT array_agg(i.id) FROM generated_images i
                    WHERE i.job_id = j.id) AS images
            FROM image_generation_jobs j WHERE j.kind IS NOT NULL
            """
        )
        keys = await conn.fetch(
            "SELECT id, storage_key FROM generated_images WHERE job_id IS NOT NULL"
        )
    assert [dict(r) for r in mismatched] == []
    for job in jobs:
        images = job["images"] or []
        assert job["debits"] == 1, dict(job)
        if job["status"] == "completed":
            assert images == [job["image_id"]], dict(job)
            assert job["refunds"] == 0, dict(job)
        elif job["status"] == "failed":
            assert images == [], dict(job)
            assert job["refunds"] == 1, dict(job)
        else:
            assert images == [], dict(job)
            assert job["refunds"] == 0, dict(job)
    for row in keys:
        assert row["storage_key"], dict(row)
        assert await storage.exists(row["storage_key"]), f"image {row['id']} has no object"
    for job in jobs:
        if job["status"] in ("completed", "failed"):
            attempts = range(1, job["attempts"] + 1)
            left = [generation_key(job["id"], n) for n in attempts]
            left = [k for k in left if k != job["image_key"] and await storage.exists(k)]
            assert left == [], f"{job['status']} job {job['id']} left {left}"


# -- what other workers did ------------------------------------------------------------------


async def expire_lease(pool: asyncpg.Pool, job_id: UUID) -> None:
    """What time does to the lease of a worker that stopped heartbeating."""
    async with pool.acquire() as conn:
        status = await conn.execute(
            """
            UPDATE image_generation_jobs SET lease_until = now() - interval '1 second'
            WHERE id = $1 AND status = 'running'
            """,
            job_id,
        )
    assert status == "UPDATE 1"


async def claim_as_dead_worker(
    pool: asyncpg.Pool, count: int, lease_seconds: float = 60.0
) -> list[asyncpg.Record]:
    """Claim as a worker that then vanishes without another write."""
    async with pool.acquire() as conn:
        return await jobs_db.claim(conn, "dead-worker", count, lease_seconds)


async def complete_as_old_release(
    conn: asyncpg.Connection, job_id: UUID, attempt: int, key: str
) -> bool:
    """Complete the job as a worker of the release before would: its image under `key`,
    whichever attempt this is (that release wrote every attempt to the first key)."""
    return await jobs_db.complete(
        conn,
        job_id,
        attempt,
        image_id=uuid.uuid4(),
        image_url="http://x.test/old",
        storage_key=key,
        model="old",
        visibility="private",
        width=8,
        height=8,
        pack_id=None,
    )


class Refusing(LocalProvider):
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
