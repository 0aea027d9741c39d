"""The Gemini provider through the real google-genai SDK, against a loopback generateContent."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from PIL import Image

from app.config import Settings
from app.services.providers.base import (
    ContentRefused,
    ImageRequest,
    InvalidRequest,
    ProviderUnavailable,
    ReferenceImage,
)
from app.services.providers.gemini import BACKOFF_BASE_SECONDS, GeminiProvider
from tests.fakes.gemini import (
    API_KEY,
    FakeGemini,
    Reply,
    bad_request,
    finished_without_image,
    image_reply,
    not_found,
    png_for_prompt,
    prompt_blocked,
    rate_limited,
    server_error,
    slow,
    text_only,
)

FIRST = "gemini-3.1-flash-image"
SECOND = "gemini-3-pro-image"


class Clock:
    """Stands in for asyncio.sleep: records each requested delay and returns at once."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


def gemini_settings(gemini: FakeGemini, **changes: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "provider": "gemini",
        "gemini_api_key": API_KEY,
        "gemini_base_url": gemini.url,
        "gemini_models": [FIRST, SECOND],
        "gemini_timeout_seconds": 10.0,
        "gemini_max_retry_delay_seconds": 20.0,
        "gemini_server_error_retries": 2,
    }
    values.update(changes)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


MakeProvider = Callable[..., GeminiProvider]


@pytest.fixture
async def make_provider(gemini: FakeGemini, clock: Clock) -> AsyncIterator[MakeProvider]:
    made: list[GeminiProvider] = []

    def make(**changes: object) -> GeminiProvider:
        provider = GeminiProvider.from_settings(
            gemini_settings(gemini, **changes), sleep=clock.sleep
        )
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


def reference_png() -> bytes:
    buffer = io.BytesIO()
    # bytes that base64 encodes with '-' and '_' in the URL-safe alphabet
    Image.new("RGB", (8, 8), (251, 255, 254)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_image_comes_back_with_the_reference_sent_inline(
    gemini: FakeGemini, make_provider: MakeProvider
) -> None:
    reference = reference_png()
    result = await make_provider().generate(
        ImageRequest(
            prompt="a fox in the snow",
            kind="style",
            references=[ReferenceImage(reference, "image/png")],
        )
    )

    assert result.data == png_for_prompt("a fox in the snow")
    assert result.mime_type == "image/png"
    assert result.model == FIRST
    (call,) = gemini.calls
    assert call.model == FIRST
    assert call.api_key == API_KEY
    assert call.prompt == "a fox in the snow"
    assert [(image.data, image.mime_type) for image in call.images] == [(reference, "image/png")]
    assert call.response_modalities is not None and "IMAGE" in call.response_modalities


async def test_preferred_model_is_tried_first_when_known(
    gemini: FakeGemini, make_provider: MakeProvider
) -> None:
    provider = make_provider()

    result = await provider.generate(ImageRequest(prompt="a", model=SECOND))
    unknown = await provider.generate(ImageRequest(prompt="b", model="gemini-0-nonexistent"))

    assert result.model == SECOND
    assert unknown.model == FIRST
    assert [call.model for call in gemini.calls] == [SECOND, FIRST]


async def test_missing_model_falls_back_to_the_next_at_once(
    make_provider: MakeProvider, clock: Clock
) -> None:
    with FakeGemini(models={SECOND}) as only_second:
        provider = make_provider(gemini_base_url=only_second.url)

        result = await provider.generate(ImageRequest(prompt="a lighthouse"))

        assert result.model == SECOND
        assert result.data == png_for_prompt("a lighthouse")
        assert [call.model for call in only_second.calls] == [FIRST, SECOND]
    assert clock.sleeps == []


async def test_preferred_model_gone_falls_back_to_the_configured_order(
    gemini: FakeGemini, make_provider: MakeProvider, clock: Clock
) -> None:
    gemini.script(SECOND, not_found(SECOND))

    result = await make_provider().generate(ImageRequest(prompt="p", model=SECOND))

    assert result.model == FIRST
    assert [call.model for call in gemini.calls] == [SECOND, FIRST]
    assert clock.sleeps == []


async def test_rate_limit_waits_the_retry_info_delay_then_retries_once(
    gemini: FakeGemini, make_provider: MakeProvider, clock: Clock
) -> None:
    gemini.script(FIRST, rate_limited("7s"))

    result = await make_provider().generate(ImageRequest(prompt="p"))

    assert clock.sleeps == [7.0]
    assert result.model == FIRST
    assert [call.model for call in gemini.calls] == [FIRST, FIRST]


async def test_rate_limit_delay_is_capped_and_a_second_429_moves_to_the_next_model(
    gemini: FakeGemini, make_provider: MakeProvider, clock: Clock
) -> None:
    gemini.script(FIRST, rate_limited("90s"), rate_limited("0.5s"))

    result = await make_provider(gemini_max_retry_delay_seconds=12.5).generate(
        ImageRequest(prompt="p")
    )

    assert clock.sleeps == [12.5]
    assert result.model == SECOND
    assert [call.model for call in gemini.calls] == [FIRST, FIRST, SECOND]


async def test_server_errors_are_retried_with_backoff_on_the_same_model(
    gemini: FakeGemini, make_provider: MakeProvider, clock: Clock
) -> None:
    gemini.script(FIRST, server_error(500), server_error(503))

    result = await make_provider().generate(ImageRequest(prompt="p"))

    assert result.model == FIRST
    assert [call.model for call in gemini.calls] == [FIRST] * 3
    assert clock.sleeps == [BACKOFF_BASE_SECONDS, BACKOFF_BASE_SECONDS * 2]


async def test_a_timeout_is_retried_like_a_server_error(
    gemini: FakeGemini, make_provider: MakeProvider, clock: Clock
) -> None:
    gemini.script(FIRST, slow(30))
    provider = make_provider(gemini_timeout_seconds=1.0)

    result = await provider.generate(ImageRequest(prompt="p"))

    assert result.model == FIRST
    assert [call.model for call in gemini.calls] == [FIRST, FIRST]
    assert clock.sleeps == [BACKOFF_BASE_SECONDS]


async def test_every_model_unavailable_is_retryable_and_says_what_each_answered(
    gemini: FakeGemini, make_provider: MakeProvider, clock: Clock
) -> None:
    gemini.script("*", *[server_error(503)] * 6)

    with pytest.raises(ProviderUnavailable) as raised:
        await make_provider().generate(ImageRequest(prompt="p"))

    assert raised.value.retryable
    assert f"{FIRST}: 503 UNAVAILABLE" in raised.value.reason
    assert f"{SECOND}: 503 UNAVAILABLE" in raised.value.reason
    assert [call.model for call in gemini.calls] == [FIRST] * 3 + [SECOND] * 3
    assert len(clock.sleeps) == 4


async def test_blocked_prompt_is_refused_without_retry(
    gemini: FakeGemini, make_provider: MakeProvider
) -> None:
    gemini.script(FIRST, prompt_blocked("PROHIBITED_CONTENT"))

    with pytest.raises(ContentRefused) as raised:
        await make_provider().generate(ImageRequest(prompt="something forbidden"))

    assert raised.value.reason == "prompt blocked: PROHIBITED_CONTENT"
    assert not raised.value.retryable
    assert len(gemini.calls) == 1


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("IMAGE_SAFETY", "safety filters (finishReason IMAGE_SAFETY)"),
        ("NO_IMAGE", "no image (finishReason NO_IMAGE)"),
        ("IMAGE_RECITATION", "recitation"),
    ],
)
async def test_answer_stopped_without_an_image_is_refused(
    gemini: FakeGemini, make_provider: MakeProvider, reason: str, expected: str
) -> None:
    gemini.script(FIRST, finished_without_image(reason))

    with pytest.raises(ContentRefused) as raised:
        await make_provider().generate(ImageRequest(prompt="p"))

    assert expected in raised.value.reason
    assert len(gemini.calls) == 1


async def test_text_only_answer_is_refused_and_quotes_the_text(
    gemini: FakeGemini, make_provider: MakeProvider
) -> None:
    gemini.script(FIRST, text_only("I cannot draw that."))

    with pytest.raises(ContentRefused) as raised:
        await make_provider().generate(ImageRequest(prompt="p"))

    assert "without an image" in raised.value.reason
    assert "I cannot draw that." in raised.value.reason
    assert len(gemini.calls) == 1


async def test_image_after_a_text_part_is_found(
    gemini: FakeGemini, make_provider: MakeProvider
) -> None:
    gemini.script(FIRST, image_reply(b"\x89PNG fake", text="Here is your image"))

    result = await make_provider().generate(ImageRequest(prompt="p"))

    assert result.data == b"\x89PNG fake"


async def test_final_image_is_taken_not_a_thinking_draft(
    gemini: FakeGemini, make_provider: MakeProvider
) -> None:
    gemini.script(FIRST, image_reply(b"final image", draft=b"draft image"))

    result = await make_provider().generate(ImageRequest(prompt="p"))

    assert result.data == b"final image"


async def test_answer_with_only_a_thinking_draft_is_refused(
    gemini: FakeGemini, make_provider: MakeProvider
) -> None:
    # image_reply's shape, minus the final image: what a model that gave up mid-thought sends
    body = image_reply(b"final image", draft=b"draft image").body
    assert body is not None
    parts = body["candidates"][0]["content"]["parts"]
    body["candidates"][0]["content"]["parts"] = [part for part in parts if part.get("thought")]
    gemini.script(FIRST, Reply(200, body))

    with pytest.raises(ContentRefused) as raised:
        await make_provider().generate(ImageRequest(prompt="p"))

    assert "without an image" in raised.value.reason
    assert "Composing" not in raised.value.reason  # its reasoning is not quoted as an answer


async def test_default_reply_answers_every_model_until_reset(
    gemini: FakeGemini, make_provider: MakeProvider
) -> None:
    gemini.set_default(server_error(503))
    provider = make_provider(gemini_server_error_retries=0)

    with pytest.raises(ProviderUnavailable):
        await provider.generate(ImageRequest(prompt="p"))
    gemini.set_default(None)
    result = await provider.generate(ImageRequest(prompt="p"))

    assert result.data == png_for_prompt("p")
    assert [call.model for call in gemini.calls] == [FIRST, SECOND, FIRST]


async def test_bad_request_is_invalid_without_fallback(
    gemini: FakeGemini, make_provider: MakeProvider, clock: Clock
) -> None:
    gemini.script(FIRST, bad_request("Unable to process input image."))

    with pytest.raises(InvalidRequest) as raised:
        await make_provider().generate(ImageRequest(prompt="p"))

    assert "Unable to process input image." in raised.value.reason
    assert not raised.value.retryable
    assert len(gemini.calls) == 1
    assert clock.sleeps == []


async def test_rejected_api_key_is_unavailable_not_the_requests_fault(
    gemini: FakeGemini, make_provider: MakeProvider
) -> None:
    with pytest.raises(ProviderUnavailable) as raised:
        await make_provider(gemini_api_key="wrong-key").generate(ImageRequest(prompt="p"))

    assert "API key" in raised.value.reason
    assert [call.api_key for call in gemini.calls] == ["wrong-key"]


async def test_fake_accepts_both_api_versions_and_both_base64_alphabets(
    gemini: FakeGemini,
) -> None:
    reference = reference_png()
    urlsafe = base64.urlsafe_b64encode(reference).decode().rstrip("=")
    standard = base64.b64encode(reference).decode()
    assert urlsafe != standard.rstrip("=")  # the two spellings really differ
    bodies = [
        ("v1", {"inline_data": {"mime_type": "image/png", "data": urlsafe}}),
        ("v1beta", {"inlineData": {"mimeType": "image/png", "data": standard}}),
    ]
    async with httpx.AsyncClient(base_url=gemini.url) as http:
        for version, part in bodies:
            response = await http.post(
                f"/{version}/models/{FIRST}:generateContent",
                headers={"x-goog-api-key": API_KEY},
                json={"contents": [{"role": "user", "parts": [{"text": "hi"}, part]}]},
            )
            assert response.status_code == 200
            data = response.json()["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]
            assert base64.b64decode(data) == png_for_prompt("hi")

    assert [call.api_version for call in gemini.calls] == ["v1", "v1beta"]
    assert [call.images[0].data for call in gemini.calls] == [reference, reference]
