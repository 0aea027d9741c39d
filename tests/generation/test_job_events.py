"""GET /v1/jobs/{id}/events: server-sent events with a job's status and progress, over a real
HTTP connection, whether the worker runs in this process or in another one; the exact
progress sequence 0 → 10 → 60 → 90 → 100, as the database announced it; and a job waiting
for its retry, which says why and when, its progress never running backwards."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.config import Settings
from app.services.providers.factory import build_provider
from app.services.providers.local import LocalProvider
from app.services.worker import Worker
from tests.fakes.gemini import API_KEY, FakeGemini, server_error
from tests.fakes.running import running, worker_env
from tests.fakes.sse import SseEvent, SseParser
from tests.generation.conftest import (
    MakeApp,
    parse_sse,
)
from tests.support.live import live_server
from tests.support.polling import DEADLINE_SECONDS, wait_until
from tests.support.problems import assert_problem
from tests.support.serve import ATELIER

Headers = Callable[..., dict[str, str]]
ALICE, BOB = "user_alice", "user_bob"


@asynccontextmanager
async def job_notifications(db_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every NOTIFY on atelier_jobs, in order, received on a connection of our own."""
    seen: list[dict[str, Any]] = []
    conn = await asyncpg.connect(db_url)

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        seen.append(json.loads(payload))

    await conn.add_listener("atelier_jobs", on_notify)
    try:
        yield seen
    finally:
        await conn.close()


async def create_job(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post(
        "/v1/generations", json={"prompt": "a kite over a field"}, headers=headers
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def read_events(
    response: httpx.Response,
    first_seen: asyncio.Event | None = None,
    events: list[SseEvent] | None = None,
) -> list[SseEvent]:
    """The stream's events until the server ends it, appended to `events` as they arrive;
    `first_seen` is set after the first."""
    parser = SseParser()
    events = [] if events is None else events
    async for line in response.aiter_lines():
        event = parser.feed(line)
        if event is not None:
            events.append(event)
            if first_seen is not None:
                first_seen.set()
    return events


@asynccontextmanager
async def job_stream(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_id: str,
    seen: list[SseEvent] | None = None,
) -> AsyncIterator[asyncio.Task[list[SseEvent]]]:
    """The job's event stream, open once its first event arrived (subscribed: every change
    from now on is sent); yields the task that reads it until the server ends it (`seen`
    fills as the events arrive)."""
    first_seen = asyncio.Event()
    async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reading = asyncio.create_task(read_events(response, first_seen, seen))
        try:
            await first_seen.wait()
            yield reading
        finally:
            reading.cancel()  # a no-op once the stream has ended


async def test_the_stream_reports_every_progress_step_and_ends_after_completion(
    make_app: MakeApp,
    make_settings: Callable[..., Settings],
    db_url: str,
    db: asyncpg.Connection,
    auth_headers: Headers,
) -> None:
    headers = auth_headers(ALICE)
    application = make_app(worker_in_process=False)
    async with (
        live_server(application) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=DEADLINE_SECONDS) as client,
    ):
        async with job_notifications(db_url) as notified:
            job_id = await create_job(client, headers)
            stop = asyncio.Event()
            services = application.state.services
            worker = Worker(
                make_settings(worker_poll_seconds=0.1),
                services.pool,
                LocalProvider(delay_ms=300),
                services.storage,
                services.hub,
            )
            async with asyncio.timeout(DEADLINE_SECONDS):
                async with job_stream(client, headers, job_id) as reading:
                    # subscribed, and the job is still pending
                    working = asyncio.create_task(worker.run(stop))
                    try:
                        events = await reading  # returns only when the server ends the stream
                    finally:
                        stop.set()
                        await working
            final = await client.get(f"/v1/jobs/{job_id}", headers=headers)
            # Notifications arrive in commit order: once this marker is in, so is every
            # change the worker made.
            await db.execute("SELECT pg_notify('atelier_jobs', '{\"id\": \"end\"}')")
            await wait_until(
                lambda: bool(notified) and notified[-1]["id"] == "end", "the end marker"
            )

    recorded = [(n["status"], n["progress"]) for n in notified if n["id"] == job_id]
    assert recorded == [
        ("pending", 0),
        ("running", 10),
        ("running", 60),
        ("running", 90),
        ("completed", 100),
    ]
    jobs = [event.json() for event in events]
    assert {event.event for event in events} == {"job"}
    assert all(job["id"] == job_id for job in jobs)
    assert [(job["status"], job["progress"]) for job in jobs] == recorded
    assert [event.id for event in events] == ["0", "10", "60", "90", "100"]
    assert jobs[-1]["image"]["url"] and jobs[-1]["completed_at"]
    assert jobs[-1] == final.json()


async def test_the_stream_follows_a_job_run_by_a_worker_in_another_process(
    make_app: MakeApp,
    make_settings: Callable[..., Settings],
    db_url: str,
    db: asyncpg.Connection,
    auth_headers: Headers,
    tmp_path: Path,
) -> None:
    headers = auth_headers(ALICE)
    settings = make_settings(worker_in_process=False)
    env = worker_env(
        settings, PROVIDER="local", LOCAL_PROVIDER_DELAY_MS="200", WORKER_POLL_SECONDS="0.2"
    )
    application = make_app(worker_in_process=False)
    async with (
        live_server(application) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=DEADLINE_SECONDS) as client,
    ):
        job_id = await create_job(client, headers)
        worker: asyncio.subprocess.Process | None = None
        log_path = tmp_path / "worker.log"
        try:
            async with asyncio.timeout(DEADLINE_SECONDS):
                async with job_stream(client, headers, job_id) as reading:
                    with log_path.open("wb") as log_file:
                        worker = await asyncio.create_subprocess_exec(
                            str(ATELIER),
                            "worker",
                            env=env,
                            cwd=tmp_path,
                            stdout=log_file,
                            stderr=subprocess.STDOUT,
                        )
                    events = await reading
        finally:
            if worker is not None:
                worker.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(worker.wait(), DEADLINE_SECONDS)
                except TimeoutError:
                    worker.kill()
                    await worker.wait()
        image = await client.get(
            events[-1].json()["image"]["url"].replace(settings.public_base_url, base_url)
        )
    output = log_path.read_text(errors="replace")[-2000:]

    jobs = [event.json() for event in events]
    assert jobs[0]["status"] == "pending"
    assert jobs[-1]["status"] == "completed", output
    assert jobs[-1]["progress"] == 100
    assert [job["progress"] for job in jobs] == sorted(job["progress"] for job in jobs)
    assert worker is not None and worker.returncode == 0, output
    # It was the other process that ran it: the job's worker id carries that process's pid.
    worker_id = await db.fetchval(
        "SELECT worker_id FROM image_generation_jobs WHERE id = $1", uuid.UUID(job_id)
    )
    assert worker_id is not None and f":{worker.pid}:" in worker_id
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


async def test_the_stream_of_a_finished_job_sends_it_once_and_ends(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    created = await client.post(
        "/v1/generations", json={"prompt": "a moth"}, headers={**headers, "Prefer": "wait=10"}
    )
    assert created.status_code == 200, created.text

    # The ASGI transport returns only once the stream has ended.
    response = await asyncio.wait_for(
        client.get(f"/v1/jobs/{created.json()['id']}/events", headers=headers), DEADLINE_SECONDS
    )

    assert response.status_code == 200
    [event] = parse_sse(response.text)
    assert event.event == "job"
    assert event.json() == created.json()


async def test_the_stream_of_another_users_job_is_a_404_problem(
    make_app: MakeApp, auth_headers: Headers
) -> None:
    async with running(make_app(worker_in_process=False)) as client:
        job_id = await create_job(client, auth_headers(ALICE))

        other = await client.get(f"/v1/jobs/{job_id}/events", headers=auth_headers(BOB))
        missing = await client.get(f"/v1/jobs/{uuid.uuid4()}/events", headers=auth_headers(ALICE))
        malformed = await client.get("/v1/jobs/nope/events", headers=auth_headers(ALICE))
        anonymous = await client.get(f"/v1/jobs/{job_id}/events")

    assert_problem(other, 404)
    assert_problem(missing, 404)
    assert_problem(malformed, 422)
    assert_problem(anonymous, 401)


# -- retries --------------------------------------------------------------------------------

MODEL = "gemini-only-model"


async def test_a_job_waiting_for_its_retry_shows_why_and_when_and_its_progress_never_drops(
    make_app: MakeApp,
    make_settings: Callable[..., Settings],
    db: asyncpg.Connection,
    auth_headers: Headers,
) -> None:
    # Gemini (the loopback stand-in) answers the first attempt with a 503.
    headers = auth_headers("user_retry")
    application = make_app(worker_in_process=False)
    with FakeGemini() as gemini:
        gemini.script(MODEL, server_error(503))  # the first attempt; then an image
        settings = make_settings(
            provider="gemini",
            gemini_api_key=API_KEY,
            gemini_base_url=gemini.url,
            gemini_models=[MODEL],
            gemini_server_error_retries=0,
            max_attempts=3,
            retry_base_seconds=600,  # the retry waits until the test makes it due
            worker_poll_seconds=0.1,
        )
        async with (
            live_server(application) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=DEADLINE_SECONDS) as client,
        ):
            job_id = await create_job(client, headers)
            services = application.state.services
            worker = Worker(
                settings, services.pool, build_provider(settings), services.storage, services.hub
            )
            stop, seen = asyncio.Event(), list[SseEvent]()
            async with asyncio.timeout(DEADLINE_SECONDS):
                async with job_stream(client, headers, job_id, seen) as reading:
                    working = asyncio.create_task(worker.run(stop))
                    try:
                        await wait_until(
                            lambda: any(e.json()["status"] == "pending" for e in seen[1:]),
                            "the stream to say the job waits for its retry",
                        )
                        got = await client.get(f"/v1/jobs/{job_id}", headers=headers)
                        waiting = got.json()
                        # What time does: the retry falls due.
                        await db.execute(
                            "UPDATE image_generation_jobs SET available_at = now() WHERE id = $1",
                            uuid.UUID(job_id),
                        )
                        events = await reading
                    finally:
                        stop.set()
                        await working
            final = (await client.get(f"/v1/jobs/{job_id}", headers=headers)).json()

    assert waiting["status"] == "pending" and waiting["attempts"] == 1
    assert waiting["error"] and "503" in waiting["error"]
    assert waiting["error_code"] == "provider_unavailable"
    assert waiting["progress"] == 10  # what the failed attempt reached, not back to 0
    assert datetime.fromisoformat(waiting["retry_at"]) > datetime.fromisoformat(
        waiting["updated_at"]
    )
    jobs = [event.json() for event in events]
    progress = [job["progress"] for job in jobs]
    assert progress == sorted(progress), progress
    assert [int(event.id or "") for event in events] == progress
    # The stream said so first, with the same error, attempt and time.
    [said] = [job for job in jobs if job["status"] == "pending" and job["attempts"]]
    assert said == waiting
    assert (final["status"], final["attempts"], final["error"], final["retry_at"]) == (
        "completed",
        2,
        None,
        None,
    )
    assert final["error_code"] is None
    assert jobs[-1] == final
    assert [call.model for call in gemini.calls] == [MODEL, MODEL]
