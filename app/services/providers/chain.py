"""Fallback across providers: `PROVIDERS=gemini,fal` tries each in order (`PROVIDER` alone is
a chain of one), with the rules every provider shares.

- A retryable failure (rate limited, down, a server error, an unusable answer) or a timeout
  moves the job on to the next provider; a refusal (`ContentRefused`) or a rejected request
  (`InvalidRequest`) ends it at once: another provider must not draw what one refused.
- Each provider gets at most `PROVIDER_TIMEOUT_SECONDS`, and the whole chain at most
  `PROVIDER_DEADLINE_SECONDS` per attempt; a provider cut off by either counts as timed out
  (retryable). Whatever it was doing is cancelled (fal and Replicate cancel their request).
- A circuit breaker per (provider, model), shared by the worker's tasks, skips a provider
  that failed `PROVIDER_BREAKER_FAILURES` times in a row for
  `PROVIDER_BREAKER_COOLDOWN_SECONDS`, then lets one trial through. When every circuit is
  open the chain tries them anyway, in order: the breaker steers work toward a provider that
  answers, it never fails a job that nobody else could have drawn.
- Nobody drew it: `ProviderUnavailable` naming what each provider said (retryable: the
  worker queues the job again, and after MAX_ATTEMPTS fails and refunds it).

The result's `model` is what the job and the image record: `fal:<endpoint>`,
`replicate:<model>`, and Gemini's and the local provider's model names as they are (they
already name their provider). Latency, errors and fallbacks go to `/metrics` by provider and
model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from app.observability import Metrics
from app.services.providers.base import (
    ContentRefused,
    ImageProvider,
    ImageRequest,
    ImageResult,
    ProviderError,
    ProviderUnavailable,
)
from app.services.providers.breaker import CircuitBreaker, Key

log = logging.getLogger(__name__)


def _outcome(exc: ProviderError) -> str:
    if exc.retryable:
        return "unavailable"
    return "refused" if isinstance(exc, ContentRefused) else "invalid"


class ChainProvider:
    name = "chain"

    def __init__(
        self,
        providers: Sequence[ImageProvider],
        *,
        breaker: CircuitBreaker | None = None,
        timeout_seconds: float = 180.0,
        deadline_seconds: float = 300.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not providers:
            raise ValueError("ChainProvider needs at least one provider")
        self.providers = list(providers)
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self.timeout_seconds = timeout_seconds
        self.deadline_seconds = deadline_seconds
        self._metrics = metrics
        self._clock = clock

    def model_for(self, request: ImageRequest) -> str:
        return self.providers[0].model_for(request)

    async def aclose(self) -> None:
        for provider in self.providers:
            try:
                await provider.aclose()
            except Exception:  # close the others regardless
                log.exception("closing provider %s failed", provider.name)

    async def generate(self, request: ImageRequest) -> ImageResult:
        deadline = self._clock() + self.deadline_seconds
        said: list[str] = []
        tried = False
        for provider in self.providers:
            key = (provider.name, provider.model_for(request))
            if not self.breaker.allow(key):
                said.append(f"{key[0]} {key[1]}: skipped, failing lately (circuit open)")
                self._fallback(key, "circuit_open")
                continue
            tried = True
            result = await self._try(provider, key, request, deadline, said)
            if result is not None:
                return result
        if not tried:
            log.warning("every provider's circuit is open; trying them anyway")
            for provider in self.providers:
                key = (provider.name, provider.model_for(request))
                result = await self._try(provider, key, request, deadline, said)
                if result is not None:
                    return result
        raise ProviderUnavailable("no provider drew the image: " + "; ".join(said))

    async def _try(
        self,
        provider: ImageProvider,
        key: Key,
        request: ImageRequest,
        deadline: float,
        said: list[str],
    ) -> ImageResult | None:
        """The image, or None (and why, in `said`) when the chain should move on; raises
        what ends the job at once."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            self.breaker.released(key)
            said.append(f"{key[0]} {key[1]}: not tried, the attempt's deadline had passed")
            return None
        limit = min(self.timeout_seconds, remaining)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                result = await provider.generate(request)
        except ProviderError as exc:
            self._observe(key, _outcome(exc), started)
            if not exc.retryable:
                self.breaker.succeeded(key)  # it answered: up, only not for this request
                raise
            self.breaker.failed(key)
            said.append(f"{key[0]} {key[1]}: {exc.reason}")
            self._fallback(key, "unavailable")
            log.warning("provider %s %s did not answer (%s)", *key, exc.reason)
            return None
        except TimeoutError:
            self._observe(key, "timeout", started)
            self.breaker.failed(key)
            said.append(f"{key[0]} {key[1]}: timed out after {limit:.1f} s")
            self._fallback(key, "timeout")
            log.warning("provider %s %s timed out after %.1f s", *key, limit)
            return None
        except BaseException:  # cancelled (lease lost, shutdown) or a bug: no verdict
            self.breaker.released(key)
            raise
        self.breaker.succeeded(key)
        answered = result.model.removeprefix(f"{provider.name}:")
        self._observe((key[0], answered), "ok", started)
        return result

    def _observe(self, key: Key, outcome: str, started: float) -> None:
        if self._metrics is None:
            return
        elapsed = time.perf_counter() - started
        self._metrics.provider_latency.labels(key[0], key[1], outcome).observe(elapsed)
        if outcome != "ok":
            self._metrics.provider_errors.labels(key[0], key[1], outcome).inc()

    def _fallback(self, key: Key, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.provider_fallbacks.labels(key[0], key[1], reason).inc()
