"""Gemini image generation through google-genai's async client, with our own retry policy.

The SDK's retries are switched off (`HttpRetryOptions(attempts=1)`): it would retry a 429
without reading the server's `RetryInfo` delay, and it cannot fall back to another model.
The policy, per model in order (`ImageRequest.model` first when it is one of ours):

- 404 (model gone or renamed): the next model at once.
- 401/403 (this key may not use this model): the next model at once.
- 429: sleep for the `RetryInfo` delay (1 s when there is none), capped at
  `GEMINI_MAX_RETRY_DELAY_SECONDS`, and try the same model once more; a second 429 moves on
  to the next model.
- 5xx, timeouts and connection errors: up to `GEMINI_SERVER_ERROR_RETRIES` more attempts,
  backing off 0.5 s, 1 s, 2 s ... (at most 8 s), then the next model.
- 400 and other 4xx: `InvalidRequest`, no fallback (another model would refuse it too),
  except a rejected API key, which is our configuration, not the request: `ProviderUnavailable`.
- An answer without an image (the prompt blocked, a finishReason other than STOP such as
  IMAGE_SAFETY or NO_IMAGE, or no image part): `ContentRefused`, never retried.

Every model exhausted: `ProviderUnavailable`, naming what each model answered.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
from google import genai
from google.genai import errors, types

from app.config import Settings
from app.services.providers.base import (
    ContentRefused,
    ImageRequest,
    ImageResult,
    InvalidRequest,
    ProviderUnavailable,
)

try:  # the SDK's default HTTP backend; plain httpx when it is not installed
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
        httpx.TransportError,
        httpx2.TransportError,
        TimeoutError,
    )
except ImportError:  # pragma: no cover
    _TRANSPORT_ERRORS = (httpx.TransportError, TimeoutError)

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
EventHook = Callable[[str, str], None]  # (event, model): "answered", "fallback", "retry"

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 8.0
RATE_LIMIT_DEFAULT_DELAY_SECONDS = 1.0  # a 429 without RetryInfo
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")
_SAFETY = {
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
}
_RECITATION = {"RECITATION", "IMAGE_RECITATION"}


class _NextModel(Exception):
    """This model will not answer now; what it said goes into the final message."""


def retry_delay_seconds(error: errors.APIError) -> float | None:
    """The `RetryInfo.retryDelay` of a Google error body ("7s", "0.5s"), if there is one."""
    body = error.details if isinstance(error.details, dict) else {}
    details = (body.get("error") or body).get("details") or []
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _error_reasons(error: errors.APIError) -> set[str]:
    body = error.details if isinstance(error.details, dict) else {}
    details = (body.get("error") or body).get("details") or []
    return {str(d.get("reason")) for d in details if isinstance(d, dict) and d.get("reason")}


def _name(value: object) -> str:
    """An SDK enum's wire name (or the raw string the SDK kept for an unknown value)."""
    return str(getattr(value, "value", value))


class GeminiProvider:
    name = "gemini"

    def __init__(
        self,
        *,
        api_key: str,
        models: Sequence[str],
        base_url: str | None = None,
        timeout_seconds: float = 120.0,
        max_retry_delay_seconds: float = 20.0,
        server_error_retries: int = 2,
        sleep: Sleep = asyncio.sleep,
        on_event: EventHook | None = None,
    ) -> None:
        if not models:
            raise ValueError("GeminiProvider needs at least one model (GEMINI_MODELS)")
        self.models = list(dict.fromkeys(models))
        self.max_retry_delay_seconds = max_retry_delay_seconds
        self.server_error_retries = server_error_retries
        self._sleep = sleep
        self._on_event = on_event
        self._client = genai.Client(
            api_key=api_key,
            vertexai=False,
            http_options=types.HttpOptions(
                base_url=base_url,
                timeout=max(1, round(timeout_seconds * 1000)),  # the SDK counts milliseconds
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, sleep: Sleep = asyncio.sleep, on_event: EventHook | None = None
    ) -> GeminiProvider:
        key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else None
        if not key and not settings.gemini_base_url:
            raise ValueError("PROVIDER=gemini needs GEMINI_API_KEY (or a GEMINI_BASE_URL proxy)")
        return cls(
            # the SDK insists on a key; a GEMINI_BASE_URL proxy may not need one
            api_key=key or "unused",
            models=settings.gemini_models,
            base_url=settings.gemini_base_url,
            timeout_seconds=settings.gemini_timeout_seconds,
            max_retry_delay_seconds=settings.gemini_max_retry_delay_seconds,
            server_error_retries=settings.gemini_server_error_retries,
            sleep=sleep,
            on_event=on_event,
        )

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        self._client.close()

    async def generate(self, request: ImageRequest) -> ImageResult:
        parts = [types.Part.from_text(text=request.prompt)]
        parts += [
            types.Part.from_bytes(data=r.data, mime_type=r.mime_type) for r in request.references
        ]
        contents = [types.Content(role="user", parts=parts)]
        outcomes: list[str] = []
        for model in self._model_order(request.model):
            try:
                response = await self._call(model, contents)
            except _NextModel as exc:
                outcomes.append(f"{model}: {exc}")
                log.warning("gemini model %s did not answer (%s); trying the next one", model, exc)
                self._event("fallback", model)
                continue
            self._event("answered", model)
            return _image_from(response, model)
        raise ProviderUnavailable("no Gemini model answered: " + "; ".join(outcomes))

    def model_for(self, request: ImageRequest) -> str:
        return self._model_order(request.model)[0]

    def _model_order(self, preferred: str | None) -> list[str]:
        if preferred and preferred in self.models:
            return [preferred, *(m for m in self.models if m != preferred)]
        return list(self.models)

    def _event(self, event: str, model: str) -> None:
        if self._on_event is not None:
            self._on_event(event, model)

    async def _call(
        self, model: str, contents: list[types.Content]
    ) -> types.GenerateContentResponse:
        """One model, with its 429 and 5xx retries; raises _NextModel to move on."""
        rate_limited = False
        failures = 0
        while True:
            try:
                return await self._client.aio.models.generate_content(
                    model=model,
                    contents=contents,
                    config=types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"]),
                )
            except errors.APIError as exc:
                described = f"{exc.code} {exc.status or ''}".strip()
                if exc.code == 429:
                    if rate_limited:
                        raise _NextModel(described) from exc
                    rate_limited = True
                    asked = retry_delay_seconds(exc)
                    delay = min(
                        RATE_LIMIT_DEFAULT_DELAY_SECONDS if asked is None else asked,
                        self.max_retry_delay_seconds,
                    )
                    log.info("gemini model %s rate-limited; retrying in %.1f s", model, delay)
                    self._event("retry", model)
                    await self._sleep(delay)
                    continue
                if exc.code in (401, 403, 404):
                    raise _NextModel(described) from exc
                if exc.code == 400 and "API_KEY_INVALID" in _error_reasons(exc):
                    raise ProviderUnavailable(f"Gemini refused the API key: {exc.message}") from exc
                if 400 <= exc.code < 500 and exc.code != 408:
                    raise InvalidRequest(
                        f"Gemini rejected the request ({described}): {exc.message}"
                    ) from exc
                failure = described
            except errors.UnknownApiResponseError as exc:
                failure = f"unreadable answer ({exc})"
            except _TRANSPORT_ERRORS as exc:
                failure = f"{type(exc).__name__} (timeout or connection error)"
            if failures >= self.server_error_retries:
                raise _NextModel(failure)
            delay = min(BACKOFF_BASE_SECONDS * 2**failures, BACKOFF_CAP_SECONDS)
            failures += 1
            log.info(
                "gemini model %s failed (%s); retry %d in %.1f s", model, failure, failures, delay
            )
            self._event("retry", model)
            await self._sleep(delay)


def _image_from(response: types.GenerateContentResponse, model: str) -> ImageResult:
    """The first image part, or ContentRefused saying why there is none."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        reason = _name(feedback.block_reason)
        message = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
        raise ContentRefused(f"prompt blocked: {reason}{message}")
    if not response.candidates:
        raise ContentRefused(f"{model} answered without an image (no candidates)")
    candidate = response.candidates[0]
    finish = _name(candidate.finish_reason) if candidate.finish_reason is not None else "STOP"
    if finish not in ("STOP", "FINISH_REASON_UNSPECIFIED"):
        if finish in _SAFETY:
            what = "the image was blocked by the model's safety filters"
        elif finish in _RECITATION:
            what = "the image was blocked as a recitation of existing work"
        elif finish == "NO_IMAGE":
            what = "the model produced no image"
        else:
            what = "the model stopped without an image"
        message = f": {candidate.finish_message}" if candidate.finish_message else ""
        raise ContentRefused(f"{what} (finishReason {finish}){message}")
    # Thinking models send draft images and reasoning as `thought` parts: not the answer.
    parts: list[Any] = [
        part
        for part in (candidate.content.parts or [] if candidate.content else [])
        if not part.thought
    ]
    for part in reversed(parts):  # the last image is the finished one
        inline = part.inline_data
        if inline is not None and inline.data and (inline.mime_type or "").startswith("image/"):
            return ImageResult(
                data=inline.data, mime_type=inline.mime_type or "image/png", model=model
            )
    text = " ".join(part.text for part in parts if part.text).strip()
    said = f"; it said: {text[:300]}" if text else ""
    raise ContentRefused(f"{model} answered without an image{said}")
