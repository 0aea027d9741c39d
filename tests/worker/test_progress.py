"""While the worker stores an image: a job's progress, 60 (answered), is written on its own
only when storing takes a while, else announced by the statement that completes the job;
either way every step is announced once, in order (tests/generation/test_job_events.py
follows the quick case through the API's stream). Many answers at once are stored
STORING_AT_ONCE at a time, the others waiting their turn without a write. The write of 60
is optional: when it fails, the completion announces 60 and the answer is kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from app.config import Settings
from app.db import pool as db_pool
from app.services import jobs
from app.services.providers.local import MODEL, LocalProvider
from app.services.realtime import JOBS_CHANNEL, Hub
from app.services.storage.base import Storage
from app.services.worker import STORING_AT_ONCE, Worker
from tests.support.generations import add_user
from tests.support.polling import wait_until
from tests.worker.conftest import (
    assert_invariants,
    job_row,
    submit,
    wait_for_end,
    worker_running,
)

STEPS = [("pending", 0), ("running", 10), ("running", 60), ("running", 90), ("completed", 100)]


class HeldStorage:
    """A real store whose puts wait until the test lets them through: storing that takes
    as long as the test likes."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.name = f"held-{inner.name}"
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.held = 0  # puts waiting right now

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.holding.set()
        self.held += 1
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        await self.inner.put(key, data, content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@asynccontextmanager
async def announced(settings: Settings) -> AsyncIterator[list[dict[str, Any]]]:
    """Every NOTIFY on the jobs channel, in order, on a connection of the test's own; on the
    way out, a marker sent last is awaited, so every earlier one is in."""
    seen: list[dict[str, Any]] = []
    conn = await db_pool.connect(settings)
    await conn.add_listener(
        JOBS_CHANNEL, lambda _c, _p, _ch, payload: seen.append(json.loads(payload))
    )
    try:
        yield seen
        await conn.execute('SELECT pg_notify($1, \'{"id": "end"}\')', JOBS_CHANNEL)
        await wait_until(lambda: bool(seen) and seen[-1]["id"] == "end", "the end marker")
    finally:
        await conn.close()


async def test_a_slow_store_shows_the_answer_at_60_and_each_step_is_announced_once(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings], storage: Storage, hub: Hub
) -> None:
    settings = make_settings(worker_poll_seconds=0.1)
    user = await add_user(pool, "user_alice")
    held = HeldStorage(storage)
    worker = Worker(settings, pool, LocalProvider(), held, hub)
    async with announced(settings) as seen, worker_running(worker):
        job_id = await submit(pool, settings, storage, user, "a heron in the reeds")
        await held.holding.wait()

        async def shows_the_answer() -> bool:
            row = await job_row(pool, job_id)
            return bool(row["progress"] == 60 and row["model"] == MODEL)

        await wait_until(shows_the_answer, "progress 60 and the model while storing")
        assert (await job_row(pool, job_id))["status"] == "running"
        held.release.set()
        done = await wait_for_end(pool, [job_id])

    assert done[job_id]["status"] == "completed"
    assert [(n["status"], n["progress"]) for n in seen if n["id"] == str(job_id)] == STEPS
    await assert_invariants(pool, storage)


async def test_answers_beyond_storing_at_once_wait_their_turn_and_all_complete(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings], storage: Storage, hub: Hub
) -> None:
    count = STORING_AT_ONCE + 8
    settings = make_settings(worker_concurrency=count, worker_poll_seconds=0.1)
    user = await add_user(pool, "user_alice", credits=count)
    held = HeldStorage(storage)
    worker = Worker(settings, pool, LocalProvider(), held, hub)
    async with worker_running(worker):
        job_ids = [await submit(pool, settings, storage, user, f"a kite {i}") for i in range(count)]

        await wait_until(lambda: held.held == STORING_AT_ONCE, "the first ones storing")

        async def only_those_storing_answered() -> bool:
            # Those storing say 60; those waiting for a slot write nothing yet (a write each
            # would pile up on the pool in a burst of answers).
            progress = [(await job_row(pool, job_id))["progress"] for job_id in job_ids]
            return sorted(progress)[-STORING_AT_ONCE:] == [60] * STORING_AT_ONCE and all(
                10 <= p < 60 for p in sorted(progress)[:-STORING_AT_ONCE]
            )

        await wait_until(only_those_storing_answered, "60 only for those storing")
        assert held.held == STORING_AT_ONCE
        held.release.set()
        done = await wait_for_end(pool, job_ids)

    assert {row["status"] for row in done.values()} == {"completed"}
    await assert_invariants(pool, storage)


async def test_a_failed_write_of_60_keeps_the_answer_and_the_completion_announces_it(
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    storage: Storage,
    hub: Hub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database hiccup on the optional write must not throw the stored answer away (a
    second provider call, an attempt used up)."""
    settings = make_settings(worker_poll_seconds=0.1)
    user = await add_user(pool, "user_alice")
    held = HeldStorage(storage)
    failed: list[int] = []
    set_progress = jobs.set_progress

    async def flaky(*args: Any, **kwargs: Any) -> None:
        if args[3] == 60 and not failed:
            failed.append(60)
            raise ConnectionResetError("the connection dropped")
        await set_progress(*args, **kwargs)

    monkeypatch.setattr(jobs, "set_progress", flaky)
    provider = LocalProvider()
    worker = Worker(settings, pool, provider, held, hub)
    async with announced(settings) as seen, worker_running(worker):
        job_id = await submit(pool, settings, storage, user, "a heron in the reeds")
        await held.holding.wait()
        await wait_until(lambda: bool(failed), "the write of 60 failing")
        held.release.set()
        done = await wait_for_end(pool, [job_id])

    assert done[job_id]["status"] == "completed"
    assert done[job_id]["attempts"] == 1  # no second provider call
    assert [(n["status"], n["progress"]) for n in seen if n["id"] == str(job_id)] == STEPS
    await assert_invariants(pool, storage)
