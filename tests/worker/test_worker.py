"""The job worker in this process, on a real PostgreSQL: fencing, heartbeats, the reaper and
MAX_ATTEMPTS, only the service's own jobs, NOTIFY and polling, provider and storage failures
(a loopback Gemini, a store that is down, an S3 endpoint that is gone), and the hand-back
when the app shuts down. Every test ends by checking the books and the images.

Jobs are created as the API creates them (app.services.generations.create: debit and
ledger in one statement). A worker "that died" is stood in for by claiming with
app.db.jobs.claim and never writing again, which leaves exactly the rows a killed worker
leaves (tests/worker/test_worker_processes.py kills real ones).
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from uuid import UUID

import asyncpg
import httpx
import pytest
from PIL import Image

from app.config import Settings
from app.db import jobs
from app.main import create_app
from app.schemas.generations import GenerationCreate, UploadReference
from app.services import credits, generations, job_objects
from app.services.providers.base import ImageRequest, ImageResult
from app.services.providers.factory import build_provider
from app.services.providers.local import LocalProvider
from app.services.realtime import Hub
from app.services.storage.base import Storage, generation_key, upload_prefix
from app.services.storage.r2 import R2Storage
from app.services.worker import Worker
from tests.fakes.flaky_storage import FlakyStorage
from tests.fakes.gemini import (
    API_KEY,
    FakeGemini,
    Reply,
    bad_request,
    finished_without_image,
    held,
    image_reply,
    png_for_prompt,
    rate_limited,
    server_error,
    slow,
)
from tests.fakes.running import running
from tests.fakes.s3 import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, FakeS3
from tests.support.generations import add_user
from tests.support.polling import DEADLINE_SECONDS, wait_until
from tests.worker.conftest import (
    Refusing,
    Rounds,
    assert_invariants,
    balance,
    claim_as_dead_worker,
    complete_as_old_release,
    expire_lease,
    images_of,
    job_row,
    jobs_by_id,
    ledger_of,
    submit,
    wait_for_end,
    worker_running,
)

MakeSettings = Callable[..., Settings]
Headers = Callable[..., dict[str, str]]
ALICE = "user_alice"
FIRST, SECOND = "gemini-first-image", "gemini-second-image"


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


def gemini_settings(make_settings: MakeSettings, gemini: FakeGemini, **changes: object) -> Settings:
    values: dict[str, object] = {
        "provider": "gemini",
        "gemini_api_key": API_KEY,
        "gemini_base_url": gemini.url,
        "gemini_models": [FIRST, SECOND],
        "gemini_timeout_seconds": 20.0,
        "gemini_server_error_retries": 0,
        "gemini_max_retry_delay_seconds": 0.0,
        "worker_poll_seconds": 0.1,
        "retry_base_seconds": 0.0,
    }
    values.update(changes)
    return make_settings(**values)


# -- fencing ---------------------------------------------------------------------------------


async def test_a_stale_attempt_cannot_write_once_another_attempt_took_the_job(
    pool: asyncpg.Pool, settings: Settings, storage: Storage
) -> None:
    user = await add_user(pool, ALICE)
    job_id = await submit(pool, settings, storage, user, "a lantern")
    [first] = await claim_as_dead_worker(pool, 10)
    assert (first["id"], first["attempts"]) == (job_id, 1)
    await expire_lease(pool, job_id)  # attempt 1 stalled past its lease
    reaper = Worker(settings, pool, LocalProvider(), storage)
    assert await reaper.reap() == 1
    async with pool.acquire() as conn:
        [second] = await jobs.claim(conn, "worker-b", 10, 60)
    assert (second["id"], second["attempts"]) == (job_id, 2)

    key = generation_key(job_id)
    stale_image = uuid.uuid4()

    async def complete(conn: asyncpg.Connection, attempt: int, image_id: UUID) -> bool:
        return await jobs.complete(
            conn,
            job_id,
            attempt,
            image_id=image_id,
            image_url=f"http://x.test/{image_id}",
            storage_key=key,
            model=f"model-of-attempt-{attempt}",
            visibility="private",
            width=8,
            height=8,
            pack_id=None,
        )

    async with pool.acquire() as conn:
        # Attempt 1 wakes up and tries every write it could make: each one is refused.
        assert await jobs.extend_leases(conn, [(job_id, 1)], 60) == set()
        assert not await jobs.set_progress(conn, job_id, 1, 60, "model-of-attempt-1")
        assert not await complete(conn, 1, stale_image)
        stale = {"error": "stale", "error_code": "internal_error"}
        assert not await jobs.release(conn, job_id, 1, delay_seconds=0, **stale)
        assert not await jobs.mark_failed(conn, job_id, 1, "stale", "internal_error")
        # Attempt 2 holds the job and finishes it.
        assert await jobs.extend_leases(conn, [(job_id, 2)], 60) == {job_id}
        assert await jobs.set_progress(conn, job_id, 2, 60, "model-of-attempt-2")
        current_image = uuid.uuid4()
        assert await complete(conn, 2, current_image)
        # Once completed, nobody writes again, not even the attempt that completed it.
        assert not await complete(conn, 2, uuid.uuid4())
        assert not await complete(conn, 1, uuid.uuid4())
        assert not await jobs.mark_failed(conn, job_id, 2, "late", "internal_error")
        assert not await jobs.mark_failed(conn, job_id, None, "late", "internal_error")
        assert not await jobs.set_progress(conn, job_id, 2, 10)

    job = await job_row(pool, job_id)
    assert (job["status"], job["attempts"], job["worker_id"]) == ("completed", 2, "worker-b")
    assert (job["image_id"], job["model"], job["progress"]) == (
        current_image,
        "model-of-attempt-2",
        100,
    )
    assert [row["id"] for row in await images_of(pool, job_id)] == [current_image]
    assert await ledger_of(pool, job_id) == [("generate", -1)]


async def test_a_late_answer_to_a_taken_over_attempt_changes_nothing(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    gemini: FakeGemini,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = gemini_settings(make_settings, gemini, worker_concurrency=1)
    user = await add_user(pool, ALICE)
    # Worker A's call (a 16 px image) is held until worker B has taken the job over and made
    # its own call; B's answer (32 px) comes 1 s later, so A's late answer arrives while B's
    # attempt is still waiting.
    a_answers = threading.Event()
    gemini.script(
        "*",
        held(a_answers, image_reply(png_for_prompt("stale", size=16))),
        slow(1.0, image_reply(png_for_prompt("fresh", size=32))),
    )
    job_id = await submit(pool, settings, storage, user, "a slow heron")
    a = Worker(settings, pool, build_provider(settings), storage, worker_id="worker-a")
    b = Worker(settings, pool, build_provider(settings), storage, worker_id="worker-b")
    with caplog.at_level(logging.WARNING, logger="atelier.worker"):
        async with worker_running(a):
            await wait_until(lambda: len(gemini.calls) == 1, "worker A to call Gemini")
            # A's lease runs out while it waits (as if it stalled), and the reaper requeues it.
            await expire_lease(pool, job_id)
            assert await a.reap() == 1
            async with worker_running(b):  # A's only slot is busy: B takes the job
                await wait_until(lambda: len(gemini.calls) == 2, "worker B to call Gemini")
                a_answers.set()
                done = await wait_for_end(pool, [job_id])
            finished = await _updated_at(pool, job_id)
        # A has stopped too: its late answer arrived long ago and met the fence.

    assert done[job_id]["status"] == "completed"
    assert (done[job_id]["attempts"], done[job_id]["worker_id"]) == (2, "worker-b")
    assert await _updated_at(pool, job_id) == finished  # nothing written after B finished
    [image] = await images_of(pool, job_id)
    assert (image["id"], image["width"], image["height"]) == (done[job_id]["image_id"], 32, 32)
    with Image.open(io.BytesIO(await storage.get(image["storage_key"]))) as stored:
        assert stored.size == (32, 32)  # B's image; A never stored its own
    assert len(gemini.calls) == 2
    assert await ledger_of(pool, job_id) == [("generate", -1)]
    assert any("attempt 1 lost its lease" in r.getMessage() for r in caplog.records), caplog.text
    await assert_invariants(pool, storage)


class HeldPuts(FlakyStorage):
    """A store whose puts wait until `release` is set: a worker cut off from the database
    (its heartbeats fail, its lease runs out) while the store still answers it."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner, put_failures=0)
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.waiting.set()
        await self.release.wait()
        await super().put(key, data, content_type)


async def test_an_attempt_that_lost_its_lease_while_storing_leaves_the_completed_image_alone(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage, gemini: FakeGemini
) -> None:
    """Worker A has its answer (16 px) and is storing it when its lease runs out; worker B
    takes the job over and completes it (32 px). A's store then goes through: under a key
    of its own, which A removes once its completion is refused, so the image B completed
    with is still the one its row describes."""
    settings = gemini_settings(make_settings, gemini, worker_concurrency=1)
    user = await add_user(pool, ALICE)
    gemini.script(
        "*",
        image_reply(png_for_prompt("stale", size=16)),
        image_reply(png_for_prompt("fresh", size=32)),
    )
    job_id = await submit(pool, settings, storage, user, "a heron cut off")
    held_store = HeldPuts(storage)
    a = Worker(settings, pool, build_provider(settings), held_store, worker_id="worker-a")
    b = Worker(settings, pool, build_provider(settings), storage, worker_id="worker-b")
    async with worker_running(a):
        await wait_until(held_store.waiting.is_set, "worker A to store its answer")
        await expire_lease(pool, job_id)
        assert await a.reap() == 1
        async with worker_running(b):
            done = await wait_for_end(pool, [job_id])
        held_store.release.set()  # A's put lands now, after B completed
        stale_key = generation_key(job_id, 1)
        await wait_until(lambda: held_store.stored == [stale_key], "worker A's put")

        async def removed() -> bool:
            return not await storage.exists(stale_key)

        await wait_until(removed, "worker A to remove what it stored")

    assert (done[job_id]["status"], done[job_id]["attempts"]) == ("completed", 2)
    [image] = await images_of(pool, job_id)
    assert image["storage_key"] == generation_key(job_id, 2)
    assert (image["width"], image["height"]) == (32, 32)
    with Image.open(io.BytesIO(await storage.get(image["storage_key"]))) as stored:
        assert stored.size == (32, 32)  # B's image, as its row says
    assert await ledger_of(pool, job_id) == [("generate", -1)]
    await assert_invariants(pool, storage)


async def test_an_image_a_worker_of_the_release_before_completed_with_is_kept(
    pool: asyncpg.Pool, settings: Settings, storage: Storage
) -> None:
    """During a rolling deploy, a worker of the release before completes attempt 2 under the
    first attempt's key (it wrote every attempt there); attempt 1, which lost its lease,
    removes what it and earlier attempts stored, but not an object a row points at."""
    user = await add_user(pool, ALICE)
    job_id = await submit(pool, settings, storage, user, "a lantern across releases")
    await claim_as_dead_worker(pool, 10)
    await expire_lease(pool, job_id)
    assert await Worker(settings, pool, LocalProvider(), storage).reap() == 1
    first_key = generation_key(job_id, 1)
    await storage.put(first_key, png_for_prompt("old release", size=8), "image/png")
    async with pool.acquire() as conn:
        [second] = await jobs.claim(conn, "old-release-worker", 10, 60)
        assert second["attempts"] == 2
        assert await complete_as_old_release(conn, job_id, 2, first_key)
    await job_objects.discard_unused(pool, storage, job_id, 1, "a test")
    assert await storage.exists(first_key)
    await assert_invariants(pool, storage)


async def test_the_attempt_that_completes_removes_what_an_earlier_one_left(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    """A worker that crashed between its put and its completion left its object: the next
    attempt's completion removes it."""
    settings = make_settings(worker_poll_seconds=0.1)
    user = await add_user(pool, ALICE)
    job_id = await submit(pool, settings, storage, user, "a lantern left behind")
    await claim_as_dead_worker(pool, 10)
    crashed_key = generation_key(job_id, 1)
    await storage.put(crashed_key, png_for_prompt("crashed", size=8), "image/png")
    await expire_lease(pool, job_id)
    async with worker_running(Worker(settings, pool, LocalProvider(), storage)) as worker:
        assert await worker.reap() == 1
        done = await wait_for_end(pool, [job_id])
    assert (done[job_id]["status"], done[job_id]["attempts"]) == ("completed", 2)
    [image] = await images_of(pool, job_id)
    assert image["storage_key"] == generation_key(job_id, 2)
    assert not await storage.exists(crashed_key)
    await assert_invariants(pool, storage)


async def _updated_at(pool: asyncpg.Pool, job_id: UUID) -> object:
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT updated_at FROM image_generation_jobs WHERE id = $1", job_id
        )


# -- leases, the reaper and MAX_ATTEMPTS -----------------------------------------------------


async def test_heartbeats_keep_a_job_longer_than_its_lease_on_its_first_attempt(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    # The lease is 3 s, the image takes 7 s, and two workers reap every second: only the
    # heartbeat (every second) keeps the job from being requeued and run a second time.
    settings = make_settings(job_lease_seconds=3, worker_poll_seconds=0.1)
    user = await add_user(pool, ALICE)
    job_id = await submit(pool, settings, storage, user, "a patient tortoise")
    a = Worker(settings, pool, LocalProvider(delay_ms=7000), storage)
    b = Worker(settings, pool, LocalProvider(delay_ms=7000), storage)
    async with worker_running(a), worker_running(b):
        done = await wait_for_end(pool, [job_id])

    assert (done[job_id]["status"], done[job_id]["attempts"]) == ("completed", 1)
    await assert_invariants(pool, storage)


async def test_an_expired_lease_is_retried_and_after_max_attempts_failed_and_refunded_once(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    settings = make_settings(max_attempts=2)
    user = await add_user(pool, ALICE, credits=5)
    job_id = await submit(pool, settings, storage, user, "an unlucky moth")
    reaper = Worker(settings, pool, LocalProvider(), storage)

    await claim_as_dead_worker(pool, 10)
    assert await reaper.reap() == 0  # the lease is still running: nothing to reap
    async with pool.acquire() as conn:
        assert not await jobs.mark_failed(conn, job_id, None, "not yet", "worker_lost")
    await expire_lease(pool, job_id)
    assert await reaper.reap() == 1
    requeued = await job_row(pool, job_id)
    assert (requeued["status"], requeued["attempts"]) == ("pending", 1)
    assert requeued["lease_until"] is None and requeued["worker_id"] is None
    assert "stopped responding" in requeued["error_message"]
    assert requeued["error_code"] == "worker_lost"
    assert await balance(pool, ALICE) == 4  # still charged: it will be tried again

    [again] = await claim_as_dead_worker(pool, 10)
    assert again["attempts"] == 2
    await expire_lease(pool, job_id)
    assert await reaper.reap() == 1
    assert await reaper.reap() == 0

    failed = await job_row(pool, job_id)
    assert (failed["status"], failed["attempts"]) == ("failed", 2)
    assert "gave up after 2 attempts" in failed["error_message"]
    assert failed["error_code"] == "worker_lost"
    assert failed["lease_until"] is None
    assert await ledger_of(pool, job_id) == [("generate", -1), ("refund", 1)]
    assert await balance(pool, ALICE) == 5
    async with pool.acquire() as conn:
        assert await credits.refund(conn, job_id) is None  # never a second refund
    await assert_invariants(pool, storage)


async def test_concurrent_reapers_fail_and_refund_each_job_exactly_once(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    settings = make_settings(max_attempts=1)
    user = await add_user(pool, ALICE, credits=12)
    job_ids = [await submit(pool, settings, storage, user, f"moth {i}") for i in range(12)]
    assert len(await claim_as_dead_worker(pool, 12)) == 12
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE image_generation_jobs SET lease_until = now() - interval '1 second'"
        )
    assert await balance(pool, ALICE) == 0
    reapers = [Worker(settings, pool, LocalProvider(), storage) for _ in range(3)]

    counts = await asyncio.gather(*(r.reap() for r in reapers), *(r.reap() for r in reapers))

    assert sum(counts) == 12
    for job_id, job in (await jobs_by_id(pool, job_ids)).items():
        assert job["status"] == "failed"
        assert await ledger_of(pool, job_id) == [("generate", -1), ("refund", 1)]
    assert await balance(pool, ALICE) == 12
    await assert_invariants(pool, storage)


async def test_an_idle_worker_requeues_a_dead_workers_job_without_waiting_for_its_poll(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage, hub: Hub
) -> None:
    # Polling every 60 s: a dead worker's job sends no NOTIFY when its lease runs out, so
    # only the reaper's own schedule (every second with a 1 s lease) can bring it back.
    settings = make_settings(job_lease_seconds=1, worker_poll_seconds=60)
    user = await add_user(pool, ALICE)
    job_id = await submit(pool, settings, storage, user, "an orphaned kite")
    await claim_as_dead_worker(pool, 1, lease_seconds=2.0)  # runs out after the worker idles
    worker = Worker(settings, pool, LocalProvider(), storage, hub)
    async with worker_running(worker):
        done = await wait_for_end(pool, [job_id], seconds=15)  # far below the 60 s poll

    assert (done[job_id]["status"], done[job_id]["attempts"]) == ("completed", 2)
    assert done[job_id]["worker_id"] == worker.worker_id
    await assert_invariants(pool, storage)


# -- what the worker claims, and how it hears of it -------------------------------------------


async def test_the_worker_never_claims_or_reaps_jobs_the_mobile_app_created(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    hub: Hub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(worker_poll_seconds=0.1, job_lease_seconds=1)
    user = await add_user(pool, ALICE)
    async with pool.acquire() as conn:
        # The app's own rows: no kind, no lease; one it is working on itself.
        app_pending = await conn.fetchval(
            "INSERT INTO image_generation_jobs (user_id) VALUES ($1) RETURNING id", ALICE
        )
        app_running = await conn.fetchval(
            """
            INSERT INTO image_generation_jobs (user_id, status, progress)
            VALUES ($1, 'running', 40) RETURNING id
            """,
            ALICE,
        )
        before = {
            r["id"]: dict(r)
            for r in await conn.fetch(
                "SELECT * FROM image_generation_jobs WHERE id = ANY($1::uuid[])",
                [app_pending, app_running],
            )
        }
    job_id = await submit(pool, settings, storage, user, "a service job")
    worker = Worker(settings, pool, LocalProvider(), storage, hub)
    rounds = Rounds(worker, monkeypatch)
    async with worker_running(worker):
        await wait_for_end(pool, [job_id])
        claims, reaps = len(rounds.claims), rounds.reaps
        await wait_until(
            lambda: len(rounds.claims) >= claims + 3 and rounds.reaps >= reaps + 1,
            "a few more polls and one more reaper round",
        )
        async with pool.acquire() as conn:
            assert await jobs.claim(conn, "probe", 100, 60) == []
        assert await worker.reap() == 0

    async with pool.acquire() as conn:
        after = {
            r["id"]: dict(r)
            for r in await conn.fetch(
                "SELECT * FROM image_generation_jobs WHERE id = ANY($1::uuid[])",
                [app_pending, app_running],
            )
        }
    assert after == before
    assert after[app_pending]["status"] == "pending" and after[app_pending]["attempts"] == 0
    assert (await job_row(pool, job_id))["status"] == "completed"
    await assert_invariants(pool, storage)


async def test_a_new_job_wakes_an_idle_worker_through_notify(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    hub: Hub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It polls once a minute and reaps every 30 s: a job done within 10 s of being created
    # was found because its NOTIFY woke the worker.
    settings = make_settings(worker_poll_seconds=60, job_lease_seconds=120)
    user = await add_user(pool, ALICE)
    worker = Worker(settings, pool, LocalProvider(), storage, hub)
    rounds = Rounds(worker, monkeypatch)
    async with worker_running(worker):
        first = await submit(pool, settings, storage, user, "a first bell")
        await wait_for_end(pool, [first], seconds=10)
        await wait_until(rounds.idle, "the worker to go idle, in its minute-long wait")
        second = await submit(pool, settings, storage, user, "a second bell")
        done = await wait_for_end(pool, [second], seconds=10)

    assert done[second]["status"] == "completed"
    assert done[second]["worker_id"] == worker.worker_id
    await assert_invariants(pool, storage)


async def test_without_notifications_the_worker_still_finds_jobs_by_polling(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(worker_poll_seconds=0.2)
    user = await add_user(pool, ALICE)
    worker = Worker(settings, pool, LocalProvider(), storage, hub=None)
    rounds = Rounds(worker, monkeypatch)
    async with worker_running(worker):
        await wait_until(rounds.idle, "the worker to go idle, waiting for its next poll")
        job_ids = [await submit(pool, settings, storage, user, f"a quiet owl {i}") for i in (1, 2)]
        done = await wait_for_end(pool, job_ids)

    assert {job["status"] for job in done.values()} == {"completed"}
    await assert_invariants(pool, storage)


# -- the provider fails ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "code", "said"),
    [
        (finished_without_image("IMAGE_SAFETY"), "content_refused", "IMAGE_SAFETY"),
        (bad_request("Unable to process input image."), "invalid_request", "Unable to process"),
    ],
    ids=["refused", "rejected"],
)
async def test_a_refused_or_rejected_request_fails_at_once_and_is_refunded_once(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    gemini: FakeGemini,
    answer: Reply,
    code: str,
    said: str,
) -> None:
    settings = gemini_settings(make_settings, gemini)
    user = await add_user(pool, ALICE, credits=3)
    gemini.set_default(answer)
    job_id = await submit(pool, settings, storage, user, "something the model will not do")
    async with worker_running(Worker(settings, pool, build_provider(settings), storage)):
        done = await wait_for_end(pool, [job_id])

    job = done[job_id]
    assert (job["status"], job["attempts"]) == ("failed", 1)  # never retried
    assert (job["error_code"], len(gemini.calls)) == (code, 1)  # no other model asked
    assert said in job["error_message"]
    assert await images_of(pool, job_id) == []
    assert await ledger_of(pool, job_id) == [("generate", -1), ("refund", 1)]
    assert await balance(pool, ALICE) == 3
    await assert_invariants(pool, storage)


class _Crashing(LocalProvider):
    """A provider with a bug of its own: not one of the errors a provider may raise."""

    async def generate(self, request: ImageRequest) -> ImageResult:
        raise ZeroDivisionError("division by zero")


async def test_a_crash_while_generating_is_retried_then_failed_as_an_internal_error(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    settings = make_settings(max_attempts=2, retry_base_seconds=0, worker_poll_seconds=0.1)
    user = await add_user(pool, ALICE, credits=1)
    job_id = await submit(pool, settings, storage, user, "a bug in the machine")
    async with worker_running(Worker(settings, pool, _Crashing(), storage)):
        done = await wait_for_end(pool, [job_id])

    job = done[job_id]
    assert (job["status"], job["attempts"]) == ("failed", 2)
    assert job["error_code"] == "internal_error"
    # the words a person reads say what happened, not the exception's text
    assert job["error_message"] == "gave up after 2 attempts: internal error while generating"
    assert await ledger_of(pool, job_id) == [("generate", -1), ("refund", 1)]
    await assert_invariants(pool, storage)


@pytest.mark.parametrize(
    "first_model_says",
    ["404 not found", "429 twice"],
)
async def test_when_the_first_model_does_not_answer_the_model_that_did_is_recorded(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    first_model_says: str,
) -> None:
    with FakeGemini(models={SECOND} if first_model_says.startswith("404") else None) as gemini:
        if first_model_says.startswith("429"):
            gemini.script(FIRST, rate_limited("0s"), rate_limited("0s"))
        settings = gemini_settings(make_settings, gemini)
        user = await add_user(pool, ALICE)
        job_id = await submit(pool, settings, storage, user, "a fox in the snow")
        async with worker_running(Worker(settings, pool, build_provider(settings), storage)):
            done = await wait_for_end(pool, [job_id])
        calls = [call.model for call in gemini.calls]

    job = done[job_id]
    assert (job["status"], job["attempts"], job["model"]) == ("completed", 1, SECOND)
    assert calls == (
        [FIRST, SECOND] if first_model_says.startswith("404") else [FIRST] * 2 + [SECOND]
    )
    [image] = await images_of(pool, job_id)
    assert (image["id"], image["model"]) == (job["image_id"], SECOND)
    assert await storage.get(image["storage_key"]) == png_for_prompt("a fox in the snow")
    assert await ledger_of(pool, job_id) == [("generate", -1)]
    await assert_invariants(pool, storage)


async def test_an_unavailable_provider_is_retried_then_failed_and_refunded(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage, gemini: FakeGemini
) -> None:
    settings = gemini_settings(make_settings, gemini, max_attempts=2)
    user = await add_user(pool, ALICE, credits=2)
    gemini.set_default(server_error(503))
    job_id = await submit(pool, settings, storage, user, "an overloaded request")
    async with worker_running(Worker(settings, pool, build_provider(settings), storage)):
        done = await wait_for_end(pool, [job_id])

    job = done[job_id]
    assert (job["status"], job["attempts"]) == ("failed", 2)
    assert "gave up after 2 attempts" in job["error_message"]
    assert "503" in job["error_message"]
    assert job["error_code"] == "provider_unavailable"
    assert [call.model for call in gemini.calls] == [FIRST, SECOND, FIRST, SECOND]
    assert await ledger_of(pool, job_id) == [("generate", -1), ("refund", 1)]
    assert await balance(pool, ALICE) == 2
    await assert_invariants(pool, storage)


async def test_an_attempt_that_outlives_its_deadline_is_retried_then_failed_and_refunded(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    # A provider that takes an hour (as one retrying forever would) and a 0.5 s deadline per
    # attempt; the heartbeat would keep the lease alive all along, the deadline ends it.
    settings = make_settings(
        job_attempt_deadline_seconds=0.5,
        max_attempts=2,
        retry_base_seconds=0,
        worker_poll_seconds=0.1,
    )
    user = await add_user(pool, ALICE, credits=1)
    job_id = await submit(pool, settings, storage, user, "a very patient snail")
    async with worker_running(Worker(settings, pool, LocalProvider(delay_ms=3_600_000), storage)):
        done = await wait_for_end(pool, [job_id])

    job = done[job_id]
    assert (job["status"], job["attempts"]) == ("failed", 2)
    assert "gave up after 2 attempts" in job["error_message"]
    assert "the attempt took longer than 0.5 s" in job["error_message"]
    assert job["error_code"] == "timed_out"
    assert await images_of(pool, job_id) == []
    assert await ledger_of(pool, job_id) == [("generate", -1), ("refund", 1)]
    assert await balance(pool, ALICE) == 1
    await assert_invariants(pool, storage)


# -- the store fails -------------------------------------------------------------------------


async def test_a_job_that_fails_for_good_removes_what_an_earlier_attempt_left(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    """A worker that crashed between its put and its completion left its object; the next
    attempt fails the job for good (the provider refuses): no attempt will complete it, so
    none would remove that object."""
    settings = make_settings(worker_poll_seconds=0.1)
    user = await add_user(pool, ALICE, credits=1)
    job_id = await submit(pool, settings, storage, user, "a lantern no one will see")
    await claim_as_dead_worker(pool, 10)
    crashed_key = generation_key(job_id, 1)
    await storage.put(crashed_key, png_for_prompt("crashed", size=8), "image/png")
    await expire_lease(pool, job_id)
    async with worker_running(Worker(settings, pool, Refusing(), storage)) as worker:
        assert await worker.reap() == 1
        done = await wait_for_end(pool, [job_id])
    assert (done[job_id]["status"], done[job_id]["attempts"]) == ("failed", 2)
    assert done[job_id]["error_code"] == "content_refused"
    assert not await storage.exists(crashed_key)
    await assert_invariants(pool, storage)


async def test_a_job_the_reaper_gives_up_on_leaves_no_object_behind(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    """The last attempt's worker stored its result and vanished before completing: the
    reaper fails the job, and removes what its attempts stored."""
    settings = make_settings(max_attempts=1)
    user = await add_user(pool, ALICE, credits=1)
    job_id = await submit(pool, settings, storage, user, "a lantern on a dead worker")
    await claim_as_dead_worker(pool, 10)
    crashed_key = generation_key(job_id, 1)
    await storage.put(crashed_key, png_for_prompt("crashed", size=8), "image/png")
    await expire_lease(pool, job_id)
    assert await Worker(settings, pool, LocalProvider(), storage).reap() == 1
    async with pool.acquire() as conn:
        status = await conn.fetchval(
            "SELECT status FROM image_generation_jobs WHERE id = $1", job_id
        )
    assert status == "failed"

    async def removed() -> bool:  # in a task of its own: a slow store must not stall the loop
        return not await storage.exists(crashed_key)

    await wait_until(removed, "the dead attempt's object to go")
    assert await balance(pool, ALICE) == 1
    await assert_invariants(pool, storage)


async def test_a_storage_outage_is_retried_and_the_job_completes(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    # Two puts per attempt (storage_retries=1); the store refuses the first three.
    settings = make_settings(
        storage_retries=1, max_attempts=3, retry_base_seconds=0, worker_poll_seconds=0.1
    )
    flaky = FlakyStorage(storage, put_failures=3)
    user = await add_user(pool, ALICE)
    job_id = await submit(pool, settings, storage, user, "a sturdy bridge")
    async with worker_running(Worker(settings, pool, LocalProvider(), flaky)):
        done = await wait_for_end(pool, [job_id])

    job = done[job_id]
    assert (job["status"], job["attempts"]) == ("completed", 2)
    assert (job["error_message"], job["error_code"]) == (None, None)  # cleared by the claim
    assert (flaky.put_attempts, flaky.puts_failed) == (4, 3)
    [image] = await images_of(pool, job_id)
    # the second attempt's own key (the first one's puts all failed)
    assert image["storage_key"] == generation_key(job_id, 2) == flaky.stored[0]
    assert (await storage.get(image["storage_key"])).startswith(b"\x89PNG")
    assert await ledger_of(pool, job_id) == [("generate", -1)]
    await assert_invariants(pool, storage)


async def test_a_store_that_stays_down_fails_and_refunds_without_an_image_row(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    settings = make_settings(
        storage_retries=1, max_attempts=2, retry_base_seconds=0, worker_poll_seconds=0.1
    )
    down = FlakyStorage(storage, put_failures=None)
    user = await add_user(pool, ALICE, credits=1)
    job_id = await submit(pool, settings, storage, user, "a bridge too far")
    async with worker_running(Worker(settings, pool, LocalProvider(), down)):
        done = await wait_for_end(pool, [job_id])

    job = done[job_id]
    assert (job["status"], job["attempts"]) == ("failed", 2)
    assert "storage unavailable" in job["error_message"]
    assert job["error_code"] == "storage_unavailable"
    assert down.put_attempts == 4 and down.stored == []
    assert await images_of(pool, job_id) == []
    assert job["image_id"] is None and job["output_image_url"] is None
    assert not await storage.exists(generation_key(job_id))
    assert await ledger_of(pool, job_id) == [("generate", -1), ("refund", 1)]
    assert await balance(pool, ALICE) == 1
    await assert_invariants(pool, storage)


async def test_an_s3_store_that_is_gone_fails_and_refunds_without_an_image_row(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    s3 = FakeS3().start()
    try:
        bucket = s3.create_bucket()
        endpoint = s3.endpoint
    finally:
        s3.stop()  # the endpoint now refuses connections
    r2 = R2Storage(
        endpoint=endpoint,
        bucket=bucket,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        region=REGION,
        timeout_seconds=5,
    )
    settings = make_settings(
        storage_retries=0, max_attempts=2, retry_base_seconds=0, worker_poll_seconds=0.1
    )
    user = await add_user(pool, ALICE, credits=1)
    job_id = await submit(pool, settings, storage, user, "a cloud castle")
    async with worker_running(Worker(settings, pool, LocalProvider(), r2)):
        done = await wait_for_end(pool, [job_id])

    job = done[job_id]
    assert (job["status"], job["attempts"]) == ("failed", 2)
    assert "storage unavailable" in job["error_message"]
    assert job["error_code"] == "storage_unavailable"
    assert await images_of(pool, job_id) == []
    assert await ledger_of(pool, job_id) == [("generate", -1), ("refund", 1)]
    assert await balance(pool, ALICE) == 1
    await assert_invariants(pool, storage)  # r2 cannot be asked; nothing reached either


# -- shutdown ------------------------------------------------------------------------------


async def test_stopping_the_app_hands_its_workers_running_jobs_back(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage, auth_headers: Headers
) -> None:
    settings = make_settings(
        local_provider_delay_ms=60_000,
        shutdown_grace_seconds=0.2,
        worker_concurrency=2,
        worker_poll_seconds=0.1,
    )
    app = create_app(settings)
    headers = auth_headers(ALICE)
    async with asyncio.timeout(DEADLINE_SECONDS):
        async with running(app) as client:
            job_ids = [await _post(client, headers, f"a long one {i}") for i in range(3)]

            async def two_running() -> bool:
                rows = await jobs_by_id(pool, job_ids)
                running_now = [r for r in rows.values() if r["status"] == "running"]
                return len(running_now) == 2

            await wait_until(two_running, "the in-process worker to take two jobs")
            held = [j for j, r in (await jobs_by_id(pool, job_ids)).items() if r["attempts"]]
        # The lifespan has ended: its worker stopped and handed back what it held.

    rows = await jobs_by_id(pool, job_ids)
    assert {r["status"] for r in rows.values()} == {"pending"}
    assert len(held) == 2
    for job_id, row in rows.items():
        assert row["lease_until"] is None and row["worker_id"] is None
        # A job handed back keeps the progress it showed (it never runs backwards).
        assert row["progress"] == (10 if job_id in held else 0)
        assert row["attempts"] == (1 if job_id in held else 0)
        assert await ledger_of(pool, job_id) == [("generate", -1)]
    await assert_invariants(pool, storage)


async def _post(client: httpx.AsyncClient, headers: dict[str, str], prompt: str) -> UUID:
    response = await client.post("/v1/generations", json={"prompt": prompt}, headers=headers)
    assert response.status_code == 202, response.text
    return UUID(response.json()["id"])


async def test_a_reference_deleted_before_the_job_runs_fails_it_at_once_and_refunds(
    pool: asyncpg.Pool, make_settings: MakeSettings, storage: Storage
) -> None:
    settings = make_settings(max_attempts=3, retry_base_seconds=0, worker_poll_seconds=0.1)
    user = await add_user(pool, ALICE)
    key = f"{upload_prefix(ALICE)}source.png"
    source = io.BytesIO()
    Image.new("RGB", (8, 8), "navy").save(source, format="PNG")
    await storage.put(key, source.getvalue(), "image/png")
    body = GenerationCreate(
        prompt="make it night", kind="edit", reference=UploadReference(upload_key=key)
    )
    async with pool.acquire() as conn:
        row, _ = await generations.create(conn, settings, user, body, None)
    await storage.delete(key)  # gone between the request and the worker
    async with worker_running(Worker(settings, pool, LocalProvider(), storage)):
        done = await wait_for_end(pool, [row["id"]])

    job = done[row["id"]]
    # Final on the first attempt: no later attempt could find the object either.
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert "no longer exists" in job["error_message"]
    assert job["error_code"] == "reference_missing"
    assert await ledger_of(pool, row["id"]) == [("edit", -1), ("refund", 1)]
    await assert_invariants(pool, storage)


async def test_a_job_waiting_for_its_backoff_is_taken_again_when_due_not_at_the_next_poll(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    gemini: FakeGemini,
) -> None:
    """A retry waiting for its backoff sends no NOTIFY (it could not be claimed yet, and
    would wake every idle worker for nothing); the worker that put it back wakes itself
    when it is due, long before its poll (an hour here) or its reaper's round."""
    settings = gemini_settings(
        make_settings,
        gemini,
        gemini_models=[FIRST],
        worker_poll_seconds=3600.0,
        job_lease_seconds=600.0,  # its reaper, which also wakes the loop, every 150 s
        retry_base_seconds=0.5,
        max_attempts=3,
    )
    gemini.script("*", server_error(503), image_reply(png_for_prompt("a kite")))
    user = await add_user(pool, ALICE)
    # Queued before the worker starts (it has no hub, so hears no NOTIFY): its first round
    # takes the job; the retry is what is under test.
    job_id = await submit(pool, settings, storage, user, "a kite")
    worker = Worker(settings, pool, build_provider(settings), storage)
    async with worker_running(worker):
        # Not a speed requirement: without the wake the retry waits for the worker's next
        # periodic round, its reaper's, 150 s later.
        done = await wait_for_end(pool, [job_id], seconds=10)

    assert (done[job_id]["status"], done[job_id]["attempts"]) == ("completed", 2)
    assert len(gemini.calls) == 2
    await assert_invariants(pool, storage)
