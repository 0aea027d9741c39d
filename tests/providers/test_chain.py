"""Fallback across providers (`PROVIDERS=gemini,fal`) and the circuit breaker.

On the wire: a loopback Gemini that answers 429 for every model and a loopback fal that
draws the image; a Gemini refusal that must not fall back. The breaker, the deadline and
timeouts are driven with scripted in-process providers and an injected clock (no sleeps).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from app.config import Settings
from app.observability import Metrics
from app.services.providers.base import (
    ContentRefused,
    ImageRequest,
    ImageResult,
    InvalidRequest,
    ProviderError,
    ProviderUnavailable,
)
from app.services.providers.breaker import CircuitBreaker
from app.services.providers.chain import ChainProvider
from app.services.providers.factory import build_provider
from tests.fakes import fal as fal_fake
from tests.fakes import replicate as replicate_fake
from tests.fakes.fal import FakeFal
from tests.fakes.gemini import (
    API_KEY,
    FakeGemini,
    finished_without_image,
    rate_limited,
    server_error,
)
from tests.fakes.replicate import FakeReplicate
from tests.fakes.tls import ca_file
from tests.support.polling import wait_until

FIRST, SECOND = "gemini-first-image", "gemini-second-image"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


class Scripted:
    """An in-process provider answering from a script: an exception to raise, "hang", or
    (once the script is empty) an image."""

    def __init__(self, name: str, *script: ProviderError | str) -> None:
        self.name = name
        self.script = list(script)
        self.calls = 0

    def model_for(self, request: ImageRequest) -> str:
        return f"{self.name}-model"

    async def generate(self, request: ImageRequest) -> ImageResult:
        self.calls += 1
        step = self.script.pop(0) if self.script else None
        if step == "hang":
            await asyncio.Event().wait()
        if isinstance(step, ProviderError):
            raise step
        return ImageResult(b"png", "image/png", f"{self.name}:{self.name}-model")

    async def aclose(self) -> None:
        pass


def down() -> ProviderUnavailable:
    return ProviderUnavailable("503 UNAVAILABLE")


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
def fal(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFal]:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file())
    with FakeFal() as server:
        yield server


def chain_settings(gemini: FakeGemini, **changes: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "providers": ["gemini", "fal"],
        "gemini_api_key": API_KEY,
        "gemini_base_url": gemini.url,
        "gemini_models": [FIRST, SECOND],
        "gemini_max_retry_delay_seconds": 0.0,
        "gemini_server_error_retries": 0,
        "fal_key": fal_fake.KEY,
        "provider_output_hosts": ["127.0.0.1"],
        "provider_poll_seconds": 0.01,
    }
    values.update(changes)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# -- on the wire -----------------------------------------------------------------------------


async def test_gemini_rate_limited_on_every_model_falls_back_to_fal_which_draws_it(
    gemini: FakeGemini, fal: FakeFal
) -> None:
    gemini.set_default(rate_limited("0s"))
    metrics = Metrics()
    provider = build_provider(chain_settings(gemini), metrics)
    try:
        result = await provider.generate(ImageRequest(prompt="a fox in the snow"))
    finally:
        await provider.aclose()

    assert result.model == f"fal:{fal_fake.TEXT_TO_IMAGE}"
    assert result.data == fal_fake.png_for_prompt("a fox in the snow")
    assert [c.model for c in gemini.calls] == [FIRST, FIRST, SECOND, SECOND]
    assert len(fal.submitted) == 1
    fallback = "atelier_provider_fallbacks_total"
    assert sample(metrics, fallback, provider="gemini", model=FIRST, reason="unavailable") == 1
    assert sample(metrics, fallback, provider="gemini", model=FIRST, reason="next_model") == 1
    assert sample(metrics, fallback, provider="gemini", model=SECOND, reason="next_model") == 1
    errors = "atelier_provider_errors_total"
    assert sample(metrics, errors, provider="gemini", model=FIRST, error="unavailable") == 1
    latency = "atelier_provider_request_duration_seconds_count"
    assert sample(metrics, latency, provider="fal", model=fal_fake.TEXT_TO_IMAGE, outcome="ok")
    exposed = generate_latest(metrics.registry).decode()
    assert 'atelier_provider_fallbacks_total{model="gemini-first-image"' in exposed


async def test_a_gemini_refusal_never_falls_back(gemini: FakeGemini, fal: FakeFal) -> None:
    gemini.set_default(finished_without_image("IMAGE_SAFETY"))
    metrics = Metrics()
    provider = build_provider(chain_settings(gemini), metrics)
    try:
        with pytest.raises(ContentRefused, match="IMAGE_SAFETY"):
            await provider.generate(ImageRequest(prompt="something refused"))
    finally:
        await provider.aclose()

    assert len(gemini.calls) == 1
    assert fal.calls == []
    errors = "atelier_provider_errors_total"
    assert sample(metrics, errors, provider="gemini", model=FIRST, error="refused") == 1


async def test_every_provider_down_is_retryable_and_names_what_each_said(
    gemini: FakeGemini, fal: FakeFal
) -> None:
    gemini.set_default(server_error(503))
    fal.set_default("submit", fal_fake.server_error(502))
    provider = build_provider(chain_settings(gemini, provider_retries=0))
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.generate(ImageRequest(prompt="nobody answers"))
    finally:
        await provider.aclose()

    assert caught.value.retryable
    assert "gemini" in caught.value.reason and "503" in caught.value.reason
    assert "fal" in caught.value.reason and "502" in caught.value.reason


async def test_fal_timing_out_is_cancelled_and_replicate_draws_it(
    gemini: FakeGemini, fal: FakeFal
) -> None:
    fal.statuses = ["IN_PROGRESS"]  # never completes
    with FakeReplicate() as replicate:
        settings = chain_settings(
            gemini,
            providers=["fal", "replicate"],
            provider_timeout_seconds=0.5,
            replicate_api_token=replicate_fake.TOKEN,
            replicate_base_url=replicate.url,
        )
        provider = build_provider(settings)
        try:
            result = await provider.generate(ImageRequest(prompt="a crane"))
        finally:
            await provider.aclose()
        created = replicate.created

    assert result.model == f"replicate:{replicate_fake.MODEL}"
    assert result.data == replicate_fake.png_for_prompt("a crane")
    assert len(created) == 1
    assert len(fal.cancelled) == 1  # the abandoned fal request was cancelled at fal


# -- the rules, with scripted providers -------------------------------------------------------


async def test_an_invalid_request_never_falls_back() -> None:
    first, second = Scripted("a", InvalidRequest("400 bad")), Scripted("b")
    with pytest.raises(InvalidRequest):
        await ChainProvider([first, second]).generate(ImageRequest(prompt="x"))
    assert second.calls == 0


async def test_a_provider_that_times_out_is_left_for_the_next() -> None:
    first, second = Scripted("a", "hang"), Scripted("b")
    metrics = Metrics()
    chain = ChainProvider([first, second], timeout_seconds=0.05, metrics=metrics)
    result = await chain.generate(ImageRequest(prompt="x"))

    assert result.model == "b:b-model"
    fallback = "atelier_provider_fallbacks_total"
    assert sample(metrics, fallback, provider="a", model="a-model", reason="timeout") == 1


async def test_the_attempts_deadline_bounds_the_whole_chain() -> None:
    clock = Clock()
    first, second = Scripted("a", "hang"), Scripted("b")

    class Advancing(Scripted):
        async def generate(self, request: ImageRequest) -> ImageResult:
            clock.now += 100  # this provider took the whole deadline
            raise down()

    chain = ChainProvider([Advancing("slow"), first, second], deadline_seconds=50, clock=clock)
    with pytest.raises(ProviderUnavailable, match="deadline had passed"):
        await chain.generate(ImageRequest(prompt="x"))
    assert (first.calls, second.calls) == (0, 0)


async def test_the_breaker_skips_a_failing_provider_then_lets_one_trial_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown_seconds=30, clock=clock)
    flaky, backup = Scripted("a", down(), down(), down()), Scripted("b")
    metrics = Metrics()
    chain = ChainProvider([flaky, backup], breaker=breaker, metrics=metrics, clock=clock)
    key = ("a", "a-model")

    for _ in range(2):
        assert (await chain.generate(ImageRequest(prompt="x"))).model == "b:b-model"
    assert breaker.state(key) == "open" and flaky.calls == 2

    await chain.generate(ImageRequest(prompt="x"))  # skipped while open
    assert flaky.calls == 2
    fallback = "atelier_provider_fallbacks_total"
    assert sample(metrics, fallback, provider="a", model="a-model", reason="circuit_open") == 1

    clock.now += 30  # cool-down over: half-open, one trial, which fails: open again
    assert breaker.state(key) == "half-open"
    await chain.generate(ImageRequest(prompt="x"))
    assert flaky.calls == 3 and breaker.state(key) == "open"

    clock.now += 30  # the next trial succeeds: closed
    assert (await chain.generate(ImageRequest(prompt="x"))).model == "a:a-model"
    assert breaker.state(key) == "closed" and flaky.calls == 4


def test_a_half_open_circuit_lets_exactly_one_caller_try() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown_seconds=10, clock=clock)
    key = ("a", "m")
    breaker.failed(key)
    assert not breaker.allow(key)
    clock.now += 10
    assert breaker.allow(key)  # the trial
    assert not breaker.allow(key)  # everyone else waits for its verdict
    breaker.released(key)  # cancelled without a verdict: the slot is free again
    assert breaker.allow(key)
    breaker.succeeded(key)
    assert breaker.state(key) == "closed" and breaker.allow(key)


async def test_a_refusal_counts_as_the_provider_being_up() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown_seconds=30, clock=clock)
    provider = Scripted("a", down(), ContentRefused("no"), down())
    chain = ChainProvider([provider], breaker=breaker, clock=clock)
    for error in (ProviderUnavailable, ContentRefused, ProviderUnavailable):
        with pytest.raises(error):
            await chain.generate(ImageRequest(prompt="x"))
    assert breaker.state(("a", "a-model")) == "closed"  # never two failures in a row


async def test_with_every_circuit_open_the_chain_still_tries_in_order() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown_seconds=30, clock=clock)
    only = Scripted("a", down())
    chain = ChainProvider([only], breaker=breaker, clock=clock)
    with pytest.raises(ProviderUnavailable):
        await chain.generate(ImageRequest(prompt="x"))
    assert breaker.state(("a", "a-model")) == "open"

    result = await chain.generate(ImageRequest(prompt="x"))  # nobody else could draw it
    assert result.model == "a:a-model" and only.calls == 2


async def test_cancelling_a_trial_gives_its_slot_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown_seconds=0, clock=clock)
    breaker.failed(("a", "a-model"))
    trial = Scripted("a", "hang")
    chain = ChainProvider([trial, Scripted("b")], breaker=breaker, clock=clock)
    task = asyncio.create_task(chain.generate(ImageRequest(prompt="x")))
    await wait_until(lambda: trial.calls == 1, "the trial call")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.allow(("a", "a-model"))


# -- settings --------------------------------------------------------------------------------


def test_providers_is_an_ordered_list_and_provider_the_one_provider_form() -> None:
    assert Settings(_env_file=None, provider="gemini").provider_chain == ["gemini"]
    chained = Settings(_env_file=None, providers="fal, gemini")
    assert chained.provider_chain == ["fal", "gemini"]
    with pytest.raises(ValueError, match="twice"):
        Settings(_env_file=None, providers="fal,fal")
    with pytest.raises(ValueError):
        Settings(_env_file=None, providers="fal,midjourney")


def test_production_refuses_local_anywhere_in_the_chain() -> None:
    settings = Settings(_env_file=None, providers="gemini,local")
    assert any("local" in problem for problem in settings.production_problems())
