"""The fal provider through the real fal-client, against a loopback TLS stand-in of fal's
queue API (tests/fakes/fal.py): submit, status with progress, result, the image fetched."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from app.config import Settings
from app.services.providers.base import (
    ContentRefused,
    ImageRequest,
    InvalidRequest,
    ProviderUnavailable,
    ReferenceImage,
)
from app.services.providers.fal import FalProvider
from tests.fakes.fal import (
    IMAGE_TO_IMAGE,
    KEY,
    TEXT_TO_IMAGE,
    FakeFal,
    Reply,
    content_policy,
    empty_result,
    malformed_result,
    nsfw_result,
    png_for_prompt,
    rate_limited,
    server_error,
)
from tests.fakes.tls import ca_file
from tests.support.polling import wait_until


class Clock:
    """Stands in for asyncio.sleep: records each delay, yields to the loop, returns at once."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def fal(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFal]:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file())
    with FakeFal() as server:
        yield server


def fal_settings(**changes: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "provider": "fal",
        "fal_key": KEY,
        "provider_output_hosts": ["127.0.0.1"],
        "provider_retries": 2,
        "provider_max_retry_delay_seconds": 5.0,
        "provider_poll_seconds": 0.25,
        "outbound_timeout_seconds": 5.0,
    }
    values.update(changes)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


MakeProvider = Callable[..., FalProvider]


@pytest.fixture
async def make_provider(fal: FakeFal) -> AsyncIterator[MakeProvider]:
    made: list[FalProvider] = []

    def make(clock: Clock | None = None, **changes: object) -> FalProvider:
        sleep = (clock or Clock()).sleep
        provider = FalProvider.from_settings(fal_settings(**changes), sleep=sleep)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def test_queue_answer_is_fetched_and_progress_only_moves_forward(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    seen: list[float] = []

    async def on_progress(fraction: float) -> None:
        seen.append(fraction)

    fal.statuses = ["IN_QUEUE", "IN_QUEUE", "IN_PROGRESS", "IN_PROGRESS:50", "COMPLETED"]
    clock = Clock()
    result = await make_provider(clock).generate(
        ImageRequest(prompt="a lighthouse", on_progress=on_progress)
    )

    assert result.data == png_for_prompt("a lighthouse")
    assert (result.mime_type, result.model) == ("image/png", f"fal:{TEXT_TO_IMAGE}")
    [(endpoint, arguments)] = fal.submitted
    assert endpoint == TEXT_TO_IMAGE
    assert arguments["prompt"] == "a lighthouse" and "image_url" not in arguments
    assert all(
        call.authorization == f"Key {KEY}" for call in fal.calls if "/files/" not in call.path
    )
    assert seen == sorted(seen) and seen[0] == pytest.approx(0.1) and seen[-1] == 1.0
    assert pytest.approx(0.65) in seen  # IN_PROGRESS with a "50%" log line
    assert clock.sleeps == [0.25] * 4  # polled at PROVIDER_POLL_SECONDS until COMPLETED
    assert fal.cancelled == []


async def test_a_reference_goes_to_the_image_to_image_model_as_a_data_uri(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    reference = ReferenceImage(png_for_prompt("source"), "image/png")
    result = await make_provider().generate(
        ImageRequest(prompt="make it blue", kind="edit", references=[reference])
    )

    [(endpoint, arguments)] = fal.submitted
    assert endpoint == IMAGE_TO_IMAGE and result.model == f"fal:{IMAGE_TO_IMAGE}"
    prefix, _, encoded = arguments["image_url"].partition(",")
    assert prefix == "data:image/png;base64"
    assert base64.b64decode(encoded) == reference.data


async def test_rate_limit_is_retried_with_the_servers_delay_then_answers(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    fal.script("submit", rate_limited("3"), rate_limited(None))
    clock = Clock()
    result = await make_provider(clock).generate(ImageRequest(prompt="a fox"))

    assert result.data == png_for_prompt("a fox")
    submits = [c for c in fal.calls if c.method == "POST"]
    assert len(submits) == 3  # fal-client's own ten retries are off: ours, visible here
    assert clock.sleeps[:2] == [3.0, 1.0]  # Retry-After honoured, then backoff 0.5 * 2


async def test_rate_limit_that_does_not_end_is_unavailable_after_the_retries(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    fal.set_default("submit", rate_limited("60"))
    clock = Clock()
    with pytest.raises(ProviderUnavailable, match="429") as caught:
        await make_provider(clock, provider_retries=1).generate(ImageRequest(prompt="a fox"))

    assert caught.value.retryable
    assert len([c for c in fal.calls if c.method == "POST"]) == 2
    assert clock.sleeps == [5.0]  # Retry-After capped at PROVIDER_MAX_RETRY_DELAY_SECONDS


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_server_errors_while_polling_are_retried_without_submitting_again(
    fal: FakeFal, make_provider: MakeProvider, code: int
) -> None:
    fal.script("status", server_error(code), server_error(code))
    result = await make_provider().generate(ImageRequest(prompt="a heron"))

    assert result.data == png_for_prompt("a heron")
    assert len(fal.submitted) == 1


async def test_server_error_that_does_not_end_is_unavailable(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    fal.set_default("submit", server_error(503))
    with pytest.raises(ProviderUnavailable, match="503"):
        await make_provider().generate(ImageRequest(prompt="a heron"))
    assert len(fal.calls) == 3


async def test_a_request_that_never_completes_times_out_and_is_cancelled_at_fal(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    fal.statuses = ["IN_PROGRESS"]  # forever
    provider = make_provider()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await provider.generate(ImageRequest(prompt="a slow one"))

    await wait_until(lambda: len(fal.cancelled) == 1, "fal to be told to cancel")
    [cancel] = [c for c in fal.calls if c.method == "PUT"]
    assert cancel.path.endswith(f"/requests/{fal.cancelled[0]}/cancel")


@pytest.mark.parametrize(
    ("step", "reply"),
    [("result", content_policy()), ("submit", content_policy()), ("result", nsfw_result())],
    ids=["422-at-result", "422-at-submit", "has-nsfw-concepts"],
)
async def test_a_refusal_is_final_and_never_retried(
    fal: FakeFal, make_provider: MakeProvider, step: str, reply: Reply
) -> None:
    fal.script(step, reply)
    with pytest.raises(ContentRefused) as caught:
        await make_provider().generate(ImageRequest(prompt="something fal refuses"))

    assert not caught.value.retryable
    assert len([c for c in fal.calls if c.method == "POST"]) == 1
    assert not any("/files/" in c.path for c in fal.calls)


async def test_an_answer_without_an_image_is_refused(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    fal.script("result", empty_result())
    with pytest.raises(ContentRefused, match="without an image"):
        await make_provider().generate(ImageRequest(prompt="nothing"))


async def test_a_malformed_answer_is_unavailable_so_another_provider_may_draw_it(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    fal.script("result", malformed_result())
    with pytest.raises(ProviderUnavailable, match="images"):
        await make_provider().generate(ImageRequest(prompt="odd"))


async def test_an_image_url_off_the_allowed_hosts_is_never_fetched(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    with pytest.raises(ProviderUnavailable, match="refuses"):
        await make_provider(provider_output_hosts=["fal.media"]).generate(
            ImageRequest(prompt="ssrf")
        )
    assert not any("/files/" in c.path for c in fal.calls)


async def test_an_oversized_image_is_refused_while_reading(
    fal: FakeFal, make_provider: MakeProvider
) -> None:
    fal.script("file", Reply(200, raw=b"\x89PNG" + b"\0" * 4096))
    with pytest.raises(ProviderUnavailable, match="larger than 1024 bytes"):
        await make_provider(provider_output_max_bytes=1024).generate(ImageRequest(prompt="big"))


@pytest.mark.parametrize(("code", "error"), [(401, ProviderUnavailable), (400, InvalidRequest)])
async def test_a_bad_key_is_unavailable_and_a_bad_request_invalid(
    fal: FakeFal, make_provider: MakeProvider, code: int, error: type[Exception]
) -> None:
    fal.script("submit", Reply(code, {"detail": "no"}))
    with pytest.raises(error):
        await make_provider().generate(ImageRequest(prompt="x"))
    assert len(fal.calls) == 1
