"""fal.ai (Flux) through the official `fal-client` library's queue API: submit, poll the
status (its progress goes to `ImageRequest.on_progress`), fetch the result, then the image
the result points at (see `remote` for which URLs are followed).

Models: `FAL_MODEL` (text to image) for a `generate` without references;
`FAL_IMAGE_TO_IMAGE_MODEL` for `style`, `edit` and pack references, given the first
reference as a data URI in `image_url`. The recorded model is `fal:<endpoint id>`.

fal-client retries 408/409/429 and ingress 5xx up to ten times with up to 10 s between
tries, and offers no option to turn that off; rate limits must reach the chain at once (to
move on to another provider), so this module sets `fal_client.client.MAX_ATTEMPTS` to 1 and
applies the service's own policy (`remote.RetryPolicy`). This process uses fal-client only
here.

Answers: 429, 5xx, timeouts, connection errors → retried, then `ProviderUnavailable`; 401/403
(the key) and 404 (the model) → `ProviderUnavailable` at once; a `content_policy_violation`
or `has_nsfw_concepts` → `ContentRefused`; no image → `ContentRefused`; other 4xx →
`InvalidRequest`; an answer of the wrong shape → `ProviderUnavailable`. A request abandoned
before it completed (timeout, cancellation, an error) is cancelled on fal's side.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from typing import Any, NoReturn

import fal_client
import fal_client.client
import httpx

from app.config import Settings
from app.services.providers.base import (
    ContentRefused,
    ImageRequest,
    ImageResult,
    InvalidRequest,
    ProviderUnavailable,
)
from app.services.providers.remote import (
    RETRYABLE_STATUSES,
    Retryable,
    RetryPolicy,
    Sleep,
    fetch_output,
    normalise_hosts,
    output_client,
    retry_after_seconds,
    transport_failure,
)

log = logging.getLogger(__name__)

fal_client.client.MAX_ATTEMPTS = 1  # see the module docstring: our policy, not the library's

CONTENT_POLICY = "content_policy_violation"
CANCEL_TIMEOUT_SECONDS = 5.0
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")


class FalProvider:
    name = "fal"

    def __init__(
        self,
        *,
        key: str,
        model: str,
        image_to_image_model: str,
        output_hosts: list[str],
        output_max_bytes: int,
        timeout_seconds: float = 60.0,
        poll_seconds: float = 0.5,
        retries: int = 2,
        max_retry_delay_seconds: float = 20.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.model = model
        self.image_to_image_model = image_to_image_model
        self.poll_seconds = poll_seconds
        self._hosts = normalise_hosts(output_hosts)
        self._max_bytes = output_max_bytes
        self._sleep = sleep
        self._retry = RetryPolicy(retries, max_retry_delay_seconds, sleep)
        self._client = fal_client.AsyncClient(key=key, default_timeout=timeout_seconds)
        self._http = output_client(timeout_seconds)

    @classmethod
    def from_settings(cls, settings: Settings, *, sleep: Sleep = asyncio.sleep) -> FalProvider:
        if settings.fal_key is None or not settings.fal_key.get_secret_value():
            raise ValueError("PROVIDER=fal needs FAL_KEY")
        return cls(
            key=settings.fal_key.get_secret_value(),
            model=settings.fal_model,
            image_to_image_model=settings.fal_image_to_image_model,
            output_hosts=settings.provider_output_hosts,
            output_max_bytes=settings.provider_output_max_bytes,
            timeout_seconds=settings.outbound_timeout_seconds,
            poll_seconds=settings.provider_poll_seconds,
            retries=settings.provider_retries,
            max_retry_delay_seconds=settings.provider_max_retry_delay_seconds,
            sleep=sleep,
        )

    def model_for(self, request: ImageRequest) -> str:
        return self.image_to_image_model if request.references else self.model

    async def aclose(self) -> None:
        await self._http.aclose()
        # fal-client opens its httpx client lazily (a cached property) and offers no close:
        # close it when it was opened, without opening one just to close it
        if "_client" in vars(self._client):
            opened: httpx.AsyncClient = await self._client._client
            await opened.aclose()

    async def generate(self, request: ImageRequest) -> ImageResult:
        model = self.model_for(request)
        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "num_images": 1,
            "output_format": "png",
            "enable_safety_checker": True,
        }
        if request.references:
            first = request.references[0]
            encoded = base64.b64encode(first.data).decode()
            arguments["image_url"] = f"data:{first.mime_type};base64,{encoded}"
        handle = await self._retry.run(
            f"fal {model}", lambda: _call(self._client.submit(model, arguments))
        )
        completed: fal_client.Completed | None = None
        try:
            completed = await self._wait(handle, request, model)
        finally:
            if completed is None:  # abandoned: timed out, cancelled or failed while queued
                await asyncio.shield(self._cancel(handle))
        if completed.error:
            _raise_for_error(completed.error_type, completed.error, model)
        result = await self._retry.run(f"fal {model}", lambda: _call(handle.get()))
        url = _image_url(result, model)
        data, mime = await self._retry.run(
            f"fal {model} image",
            lambda: fetch_output(
                self._http, url, hosts=self._hosts, max_bytes=self._max_bytes, what="fal"
            ),
        )
        return ImageResult(data=data, mime_type=mime, model=f"fal:{model}")

    async def _wait(
        self, handle: fal_client.AsyncRequestHandle, request: ImageRequest, model: str
    ) -> fal_client.Completed:
        """Poll until the request completed, reporting progress on the way."""
        while True:
            status = await self._retry.run(
                f"fal {model}", lambda: _call(handle.status(with_logs=True))
            )
            if isinstance(status, fal_client.Completed):
                await request.progress(1.0)
                return status
            if isinstance(status, fal_client.InProgress):
                await request.progress(0.3 + 0.7 * _percent_done(status.logs))
            else:
                await request.progress(0.1)
            await self._sleep(self.poll_seconds)

    async def _cancel(self, handle: fal_client.AsyncRequestHandle) -> None:
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                await handle.cancel()
            log.info("fal request %s cancelled", handle.request_id)
        except Exception as exc:  # best effort: fal ends it by itself eventually
            log.warning("could not cancel fal request %s: %r", handle.request_id, exc)


async def _call(awaitable: Any) -> Any:
    """Await a fal-client call, turning its errors into the service's."""
    try:
        return await awaitable
    except fal_client.FalClientHTTPError as exc:
        _raise_for_http(exc)
    except httpx.TransportError as exc:
        raise transport_failure(exc) from exc
    except (ValueError, KeyError, TypeError) as exc:  # a body of the wrong shape
        raise ProviderUnavailable(f"fal answered something unreadable: {exc!r}") from exc


def _raise_for_http(exc: fal_client.FalClientHTTPError) -> NoReturn:
    code = exc.status_code
    detail = exc.message if isinstance(exc.message, str) else repr(exc.message)
    if code in RETRYABLE_STATUSES:
        raise Retryable(f"HTTP {code}", retry_after_seconds(exc.response_headers)) from exc
    if _is_content_policy(exc):
        raise ContentRefused(f"fal refused the content: {detail[:300]}") from exc
    if code in (401, 403):
        raise ProviderUnavailable(f"fal refused the key (HTTP {code})") from exc
    if code == 404:
        raise ProviderUnavailable(
            f"fal does not know this model (HTTP 404): {detail[:200]}"
        ) from exc
    if 400 <= code < 500:
        raise InvalidRequest(f"fal rejected the request (HTTP {code}): {detail[:300]}") from exc
    raise ProviderUnavailable(f"fal answered HTTP {code}") from exc


def _is_content_policy(exc: fal_client.FalClientHTTPError) -> bool:
    if exc.error_type == CONTENT_POLICY:
        return True
    details: list[Any] = exc.message if isinstance(exc.message, list) else []
    return any(isinstance(d, dict) and d.get("type") == CONTENT_POLICY for d in details)


def _raise_for_error(error_type: str | None, error: str, model: str) -> NoReturn:
    if error_type == CONTENT_POLICY:
        raise ContentRefused(f"fal refused the content: {error[:300]}")
    raise ProviderUnavailable(f"fal {model} failed: {error[:300]}")


def _percent_done(logs: list[dict[str, Any]] | None) -> float:
    """The last "NN%" a log line mentions, as a fraction (0 when none does)."""
    for entry in reversed(logs or []):
        match = _PERCENT.search(str(entry.get("message", "")) if isinstance(entry, dict) else "")
        if match:
            return min(float(match.group(1)), 100.0) / 100
    return 0.0


def _image_url(result: object, model: str) -> object:
    """The first image's URL; ContentRefused for a flagged or empty answer."""
    if not isinstance(result, dict) or not isinstance(result.get("images"), list):
        raise ProviderUnavailable(f"fal {model} answered without an `images` list")
    flagged = result.get("has_nsfw_concepts") or []
    if isinstance(flagged, list) and any(flag is True for flag in flagged):
        raise ContentRefused("the image was blocked by fal's safety checker (has_nsfw_concepts)")
    images = result.get("images") or []
    if not images:
        raise ContentRefused(f"fal {model} answered without an image")
    first = images[0]
    if not isinstance(first, dict) or "url" not in first:
        raise ProviderUnavailable(f"fal {model} answered an image without a URL")
    return first["url"]
