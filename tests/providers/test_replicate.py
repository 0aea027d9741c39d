"""The Replicate provider through the real `replicate` client, against a loopback stand-in of
the predictions API (tests/fakes/replicate.py): create, poll, output, cancel."""

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
from app.services.providers.replicate import ReplicateProvider
from tests.fakes.replicate import (
    IMAGE_TO_IMAGE,
    MODEL,
    TOKEN,
    FakeReplicate,
    Reply,
    png_for_prompt,
    problem,
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
def replicate(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeReplicate]:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file())
    with FakeReplicate() as server:
        yield server


MakeProvider = Callable[..., ReplicateProvider]


@pytest.fixture
async def make_provider(replicate: FakeReplicate) -> AsyncIterator[MakeProvider]:
    made: list[ReplicateProvider] = []

    def make(clock: Clock | None = None, **changes: object) -> ReplicateProvider:
        values: dict[str, object] = {
            "env": "test",
            "provider": "replicate",
            "replicate_api_token": TOKEN,
            "replicate_base_url": replicate.url,
            "provider_output_hosts": ["127.0.0.1"],
            "provider_retries": 2,
            "provider_max_retry_delay_seconds": 5.0,
            "provider_poll_seconds": 0.25,
            "outbound_timeout_seconds": 5.0,
        }
        values.update(changes)
        settings = Settings(_env_file=None, **values)  # type: ignore[arg-type]
        provider = ReplicateProvider.from_settings(settings, sleep=(clock or Clock()).sleep)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def test_prediction_is_polled_to_its_output_and_progress_moves_forward(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    seen: list[float] = []

    async def on_progress(fraction: float) -> None:
        seen.append(fraction)

    clock = Clock()
    result = await make_provider(clock).generate(
        ImageRequest(prompt="a lighthouse", on_progress=on_progress)
    )

    assert result.data == png_for_prompt("a lighthouse")
    assert (result.mime_type, result.model) == ("image/png", f"replicate:{MODEL}")
    [(model, version, inputs)] = replicate.created
    assert (model, version, inputs["prompt"]) == (MODEL, "", "a lighthouse")
    assert replicate.calls[0].path == f"/v1/models/{MODEL}/predictions"
    assert replicate.calls[0].authorization == f"Bearer {TOKEN}"
    assert seen == sorted(seen) and seen[0] == pytest.approx(0.1) and seen[-1] == 1.0
    assert pytest.approx(0.65) in seen  # the tqdm "50%|" line in the logs
    assert clock.sleeps == [0.25, 0.25]
    [download] = [c for c in replicate.calls if c.path.startswith("/files/")]
    assert download.authorization is None  # the token never goes to an output URL


async def test_a_pinned_version_and_a_reference_use_the_versions_endpoint_and_a_data_uri(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    reference = ReferenceImage(png_for_prompt("source"), "image/png")
    provider = make_provider(replicate_image_to_image_model="acme/restyle:abc123")
    result = await provider.generate(
        ImageRequest(prompt="in ink", kind="style", references=[reference])
    )

    assert replicate.calls[0].path == "/v1/predictions"
    assert replicate.calls[0].body["version"] == "abc123"
    [(_, version, inputs)] = replicate.created
    prefix, _, encoded = inputs["input_image"].partition(",")
    assert (version, prefix) == ("abc123", "data:image/png;base64")
    assert base64.b64decode(encoded) == reference.data
    assert result.model == "replicate:acme/restyle:abc123"


async def test_the_default_image_to_image_model_takes_references(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    reference = ReferenceImage(png_for_prompt("source"), "image/png")
    await make_provider().generate(ImageRequest(prompt="x", kind="edit", references=[reference]))
    assert replicate.calls[0].path == f"/v1/models/{IMAGE_TO_IMAGE}/predictions"


async def test_a_rate_limited_create_is_retried_then_answers(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    replicate.script("create", rate_limited(), server_error(503))
    clock = Clock()
    result = await make_provider(clock).generate(ImageRequest(prompt="a fox"))

    assert result.data == png_for_prompt("a fox")
    assert len([c for c in replicate.calls if c.method == "POST"]) == 3
    assert clock.sleeps[:2] == [0.5, 1.0]


async def test_a_create_that_stays_rate_limited_is_unavailable(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    replicate.script("create", *[rate_limited()] * 3)
    with pytest.raises(ProviderUnavailable, match="429") as caught:
        await make_provider().generate(ImageRequest(prompt="a fox"))
    assert caught.value.retryable
    assert replicate.created == []


async def test_a_server_error_that_does_not_end_is_unavailable(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    replicate.script("create", *[server_error(500)] * 3)
    with pytest.raises(ProviderUnavailable, match="500"):
        await make_provider().generate(ImageRequest(prompt="a heron"))


async def test_a_prediction_abandoned_by_a_timeout_is_cancelled(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    replicate.statuses = ["starting", "processing"]  # processing forever
    provider = make_provider()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await provider.generate(ImageRequest(prompt="a slow one"))

    await wait_until(lambda: len(replicate.cancelled) == 1, "the prediction to be cancelled")
    [cancel] = [c for c in replicate.calls if c.path.endswith("/cancel")]
    assert cancel.path == f"/v1/predictions/{replicate.cancelled[0]}/cancel"


@pytest.mark.parametrize(
    "error",
    [
        "E005: The input or output was flagged as sensitive. Please try again.",
        "NSFW content detected. Try running it again, or try a different prompt.",
    ],
)
async def test_a_prediction_failed_as_flagged_content_is_refused(
    replicate: FakeReplicate, make_provider: MakeProvider, error: str
) -> None:
    replicate.statuses = ["starting", f"failed:{error}"]
    with pytest.raises(ContentRefused, match="Replicate refused"):
        await make_provider().generate(ImageRequest(prompt="something refused"))
    assert len(replicate.created) == 1


async def test_a_prediction_that_failed_otherwise_is_unavailable(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    replicate.statuses = ["starting", "failed:CUDA out of memory"]
    with pytest.raises(ProviderUnavailable, match="CUDA"):
        await make_provider().generate(ImageRequest(prompt="x"))


async def test_a_success_without_output_is_refused(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    replicate.output = []
    with pytest.raises(ContentRefused, match="without an image"):
        await make_provider().generate(ImageRequest(prompt="x"))


@pytest.mark.parametrize("output", [{"image": 1}, [7], "http://127.0.0.1/plain-http.png"])
async def test_a_malformed_or_refused_output_is_unavailable(
    replicate: FakeReplicate, make_provider: MakeProvider, output: object
) -> None:
    replicate.output = output
    with pytest.raises(ProviderUnavailable):
        await make_provider().generate(ImageRequest(prompt="x"))
    assert not any(c.path.startswith("/files/") for c in replicate.calls)


async def test_a_malformed_prediction_body_is_unavailable(
    replicate: FakeReplicate, make_provider: MakeProvider
) -> None:
    replicate.script("create", Reply(201, {"id": "x", "status": "weird"}))
    with pytest.raises(ProviderUnavailable, match="unreadable"):
        await make_provider().generate(ImageRequest(prompt="x"))


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (problem(401, "Unauthenticated", "bad token"), ProviderUnavailable),
        (problem(404, "Not found", "no such model"), ProviderUnavailable),
        (problem(422, "Invalid input", "prompt is required"), InvalidRequest),
    ],
)
async def test_key_and_model_problems_are_unavailable_and_bad_input_invalid(
    replicate: FakeReplicate,
    make_provider: MakeProvider,
    reply: Reply,
    error: type[Exception],
) -> None:
    replicate.script("create", reply)
    with pytest.raises(error):
        await make_provider().generate(ImageRequest(prompt="x"))
    assert len(replicate.calls) == 1
