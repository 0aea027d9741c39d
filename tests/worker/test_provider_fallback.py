"""Fallback across providers through the worker, on a real PostgreSQL: a loopback Gemini that
answers 429 for every model and a loopback fal (TLS, the real fal-client) that draws the
image; the job records who drew it, stores it, charges once and refunds nothing; queue
progress reaches the job's event stream and never runs backwards. A Gemini refusal fails
the job at once and refunds it, without asking fal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from uuid import UUID

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.main import create_app
from app.observability import Metrics
from app.services.providers.factory import build_provider
from app.services.realtime import JOBS_CHANNEL, Hub
from app.services.storage.base import Storage
from app.services.worker import Worker
from tests.fakes import fal as fal_fake
from tests.fakes.fal import FakeFal
from tests.fakes.gemini import API_KEY, FakeGemini, finished_without_image, rate_limited
from tests.fakes.running import running
from tests.fakes.tls import ca_file
from tests.support.generations import add_user
from tests.support.polling import wait_until
from tests.worker.conftest import (
    assert_invariants,
    balance,
    images_of,
    ledger_of,
    submit,
    wait_for_end,
    worker_running,
)

MakeSettings = Callable[..., Settings]
ALICE = "user_alice"
FIRST, SECOND = "gemini-first-image", "gemini-second-image"


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
def fal(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFal]:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file())
    with FakeFal() as server:
        yield server


def chain_settings(make_settings: MakeSettings, gemini: FakeGemini) -> Settings:
    return make_settings(
        providers=["gemini", "fal"],
        gemini_api_key=API_KEY,
        gemini_base_url=gemini.url,
        gemini_models=[FIRST, SECOND],
        gemini_max_retry_delay_seconds=0.0,
        gemini_server_error_retries=0,
        fal_key=fal_fake.KEY,
        provider_output_hosts=["127.0.0.1"],
        provider_poll_seconds=0.02,
        worker_poll_seconds=0.1,
        retry_base_seconds=0.0,
    )


async def test_gemini_rate_limited_everywhere_fal_draws_and_the_job_records_it(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    hub: Hub,
    gemini: FakeGemini,
    fal: FakeFal,
) -> None:
    gemini.set_default(rate_limited("0s"))
    fal.statuses = ["IN_QUEUE", "IN_PROGRESS:20", "IN_PROGRESS:10", "IN_PROGRESS:80", "COMPLETED"]
    settings = chain_settings(make_settings, gemini)
    user = await add_user(pool, ALICE, credits=3)
    job_id = await submit(pool, settings, storage, user, "a fox in the snow")
    metrics = Metrics()
    progress: list[int] = []

    async with hub.subscribe(JOBS_CHANNEL, str(job_id)) as sub:  # before the worker starts

        async def listen() -> None:
            while True:
                event = await sub.get()
                if event is not None and event.get("progress") is not None:
                    progress.append(event["progress"])

        listener = asyncio.create_task(listen())
        try:
            worker = Worker(settings, pool, build_provider(settings, metrics), storage)
            async with worker_running(worker):
                done = await wait_for_end(pool, [job_id])
            await wait_until(lambda: 100 in progress, "the job's last progress event")
        finally:
            listener.cancel()

    job = done[job_id]
    drawn_by = f"fal:{fal_fake.TEXT_TO_IMAGE}"
    assert (job["status"], job["attempts"], job["model"]) == ("completed", 1, drawn_by)
    [image] = await images_of(pool, job_id)
    assert (image["id"], image["model"]) == (job["image_id"], drawn_by)
    assert await storage.get(image["storage_key"]) == fal_fake.png_for_prompt("a fox in the snow")
    assert await ledger_of(pool, job_id) == [("generate", -1)]  # charged once, no refund
    assert await balance(pool, ALICE) == 2
    assert [c.model for c in gemini.calls] == [FIRST, FIRST, SECOND, SECOND]
    # the queue's progress reached the stream between 10 (claimed) and 60 (answered),
    # forward only, though fal's own log went 20% → 10% → 80%
    between = [p for p in progress if 10 < p < 60]
    assert between and between == sorted(set(between)), progress
    assert progress == sorted(progress), progress
    assert progress[-1] == 100
    fallbacks = metrics.registry.get_sample_value(
        "atelier_provider_fallbacks_total",
        {"provider": "gemini", "model": FIRST, "reason": "unavailable"},
    )
    assert fallbacks == 1
    await assert_invariants(pool, storage)


async def test_a_gemini_refusal_fails_and_refunds_without_falling_back(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    storage: Storage,
    gemini: FakeGemini,
    fal: FakeFal,
) -> None:
    gemini.set_default(finished_without_image("IMAGE_SAFETY"))
    settings = chain_settings(make_settings, gemini)
    user = await add_user(pool, ALICE, credits=3)
    job_id = await submit(pool, settings, storage, user, "something the model refuses")
    async with worker_running(Worker(settings, pool, build_provider(settings), storage)):
        done = await wait_for_end(pool, [job_id])

    job = done[job_id]
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert "IMAGE_SAFETY" in job["error_message"]
    assert fal.calls == []
    assert await ledger_of(pool, job_id) == [("generate", -1), ("refund", 1)]
    assert await balance(pool, ALICE) == 3
    await assert_invariants(pool, storage)


async def test_the_apps_metrics_show_each_providers_latency_and_fallbacks(
    pool: asyncpg.Pool,
    make_settings: MakeSettings,
    auth_headers: Callable[..., dict[str, str]],
    gemini: FakeGemini,
    fal: FakeFal,
) -> None:
    gemini.set_default(rate_limited("0s"))
    settings = chain_settings(make_settings, gemini)
    async with running(create_app(settings)) as client:
        response = await client.post(
            "/v1/generations", json={"prompt": "a heron"}, headers=auth_headers(ALICE)
        )
        assert response.status_code == 202, response.text
        done = await wait_for_end(pool, [UUID(response.json()["id"])])
        metrics = (await client.get("/metrics")).text

    assert [row["status"] for row in done.values()] == ["completed"]
    found = {
        (s.name, s.labels.get("provider"), s.labels.get("model"), s.labels.get("reason")): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name.startswith("atelier_provider_")
    }
    fal_model = fal_fake.TEXT_TO_IMAGE
    assert found[("atelier_provider_fallbacks_total", "gemini", FIRST, "unavailable")] == 1
    assert found[("atelier_provider_errors_total", "gemini", FIRST, None)] == 1
    assert found[("atelier_provider_request_duration_seconds_count", "fal", fal_model, None)] == 1
