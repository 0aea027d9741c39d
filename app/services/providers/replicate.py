"""Replicate through the official `replicate` library's async API: create a prediction, poll
it (`async_reload`; its progress goes to `ImageRequest.on_progress`), fetch the output image
(see `remote` for which URLs are followed). A prediction abandoned before it ended (timeout,
cancellation, an error) is cancelled, so nobody pays for an image no one will store.

Models: `REPLICATE_MODEL` for a `generate` without references, `REPLICATE_IMAGE_TO_IMAGE_MODEL`
for `style`, `edit` and pack references (the first one, as a data URI in `input_image`).
Either is `owner/name` (an official model: `POST /v1/models/{owner}/{name}/predictions`) or
`owner/name:version` (`POST /v1/predictions`). The recorded model is `replicate:<model>`.
`REPLICATE_BASE_URL` points the client elsewhere (tests); deployments leave it unset.

The library retries its GETs (polls) on 429/503/504 by itself; creating a prediction (a POST)
it does not retry, so the service's policy (`remote.RetryPolicy`) applies there. Answers:
429, 5xx, timeouts, connection errors → retried, then `ProviderUnavailable`; 401/403/404 →
`ProviderUnavailable` at once; other 4xx → `InvalidRequest`; a prediction that failed as
flagged content (E005, "NSFW", "sensitive", "safety") or succeeded without an output →
`ContentRefused`; one that failed otherwise or was canceled → `ProviderUnavailable`; an
output of the wrong shape → `ProviderUnavailable`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from typing import Any, NoReturn

import httpx
import pydantic
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction

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
    transport_failure,
)

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_SECONDS = 5.0
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
_REFUSAL = re.compile(r"\bE005\b|nsfw|sensitive|safety", re.IGNORECASE)


class ReplicateProvider:
    name = "replicate"

    def __init__(
        self,
        *,
        api_token: str,
        model: str,
        image_to_image_model: str,
        output_hosts: list[str],
        output_max_bytes: int,
        base_url: str | None = None,
        timeout_seconds: float = 30.0,
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
        # base_url "" would mean Replicate's own; None keeps the library from reading
        # REPLICATE_BASE_URL from the environment behind the settings' back.
        self._client = Client(
            api_token=api_token,
            base_url=base_url or "https://api.replicate.com",
            timeout=httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds)),
        )
        self._http = output_client(timeout_seconds)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, sleep: Sleep = asyncio.sleep
    ) -> ReplicateProvider:
        token = settings.replicate_api_token
        if token is None or not token.get_secret_value():
            raise ValueError("PROVIDER=replicate needs REPLICATE_API_TOKEN")
        return cls(
            api_token=token.get_secret_value(),
            model=settings.replicate_model,
            image_to_image_model=settings.replicate_image_to_image_model,
            output_hosts=settings.provider_output_hosts,
            output_max_bytes=settings.provider_output_max_bytes,
            base_url=settings.replicate_base_url,
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
        await self._client._async_client.aclose()

    async def generate(self, request: ImageRequest) -> ImageResult:
        model = self.model_for(request)
        inputs: dict[str, Any] = {"prompt": request.prompt, "output_format": "png"}
        if request.references:
            first = request.references[0]
            encoded = base64.b64encode(first.data).decode()
            inputs["input_image"] = f"data:{first.mime_type};base64,{encoded}"
        owner_name, _, version = model.partition(":")

        async def create() -> Prediction:
            if version:
                return await self._client.predictions.async_create(version=version, input=inputs)
            return await self._client.models.predictions.async_create(
                model=owner_name, input=inputs
            )

        prediction: Prediction = await self._retry.run(
            f"replicate {model}", lambda: _call(create())
        )
        try:
            while prediction.status not in TERMINAL:
                await request.progress(_fraction(prediction))
                await self._sleep(self.poll_seconds)
                await self._retry.run(
                    f"replicate {model}", lambda: _call(prediction.async_reload())
                )
        finally:
            if prediction.status not in TERMINAL:  # abandoned: cancel it on Replicate's side
                await asyncio.shield(self._cancel(prediction))
        url = _output_url(prediction, model)
        await request.progress(1.0)
        data, mime = await self._retry.run(
            f"replicate {model} image",
            lambda: fetch_output(
                self._http, url, hosts=self._hosts, max_bytes=self._max_bytes, what="Replicate"
            ),
        )
        return ImageResult(data=data, mime_type=mime, model=f"replicate:{model}")

    async def _cancel(self, prediction: Prediction) -> None:
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                await self._client.predictions.async_cancel(prediction.id)
            log.info("replicate prediction %s cancelled", prediction.id)
        except Exception as exc:  # best effort: Replicate ends it at its own timeout
            log.warning("could not cancel replicate prediction %s: %r", prediction.id, exc)


async def _call(awaitable: Any) -> Any:
    """Await a replicate call, turning its errors into the service's."""
    try:
        return await awaitable
    except ReplicateError as exc:
        _raise_for_http(exc)
    except httpx.TransportError as exc:
        raise transport_failure(exc) from exc
    except (pydantic.ValidationError, ValueError, KeyError, TypeError) as exc:
        raise ProviderUnavailable(f"Replicate answered something unreadable: {exc!r}") from exc


def _raise_for_http(exc: ReplicateError) -> NoReturn:
    code = exc.status or 0
    detail = (exc.detail or exc.title or "")[:300]
    if code in RETRYABLE_STATUSES:
        raise Retryable(f"HTTP {code}") from exc
    if code in (401, 403):
        raise ProviderUnavailable(f"Replicate refused the token (HTTP {code})") from exc
    if code == 404:
        raise ProviderUnavailable(
            f"Replicate does not know this model (HTTP 404): {detail}"
        ) from exc
    if 400 <= code < 500:
        raise InvalidRequest(f"Replicate rejected the request (HTTP {code}): {detail}") from exc
    raise ProviderUnavailable(f"Replicate answered HTTP {code}: {detail}") from exc


def _fraction(prediction: Prediction) -> float:
    progress = prediction.progress
    if progress is not None:
        return 0.3 + 0.7 * progress.percentage
    return 0.3 if prediction.status == "processing" else 0.1


def _output_url(prediction: Prediction, model: str) -> object:
    if prediction.status == "canceled":
        raise ProviderUnavailable(f"replicate {model}: the prediction was canceled")
    if prediction.status == "failed":
        error = str(prediction.error or "no reason given")
        if _REFUSAL.search(error):
            raise ContentRefused(f"Replicate refused the content: {error[:300]}")
        raise ProviderUnavailable(f"replicate {model} failed: {error[:300]}")
    output = prediction.output
    if output is None or output == [] or output == "":
        raise ContentRefused(f"replicate {model} answered without an image")
    first = output[0] if isinstance(output, list) else output
    if not isinstance(first, str):
        raise ProviderUnavailable(f"replicate {model} answered an output that is not a URL")
    return first
