"""The one place providers are chosen from settings: PROVIDERS (or PROVIDER) in order, behind
one `ChainProvider` that applies the shared rules (fallback, breaker, deadline, metrics)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from app.config import ProviderName, Settings
from app.observability import Metrics
from app.services.providers.base import ImageProvider
from app.services.providers.breaker import CircuitBreaker
from app.services.providers.chain import ChainProvider
from app.services.providers.fal import FalProvider
from app.services.providers.gemini import GeminiProvider
from app.services.providers.local import LocalProvider
from app.services.providers.remote import Sleep
from app.services.providers.replicate import ReplicateProvider


def build_one(
    name: ProviderName,
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    sleep: Sleep = asyncio.sleep,
) -> ImageProvider:
    if name == "local":
        return LocalProvider.from_settings(settings, sleep=sleep)
    if name == "gemini":

        def on_event(event: str, model: str) -> None:
            if metrics is not None and event == "fallback":
                metrics.provider_fallbacks.labels("gemini", model, "next_model").inc()

        # refuses to start without a key
        return GeminiProvider.from_settings(settings, sleep=sleep, on_event=on_event)
    if name == "fal":
        return FalProvider.from_settings(settings, sleep=sleep)
    return ReplicateProvider.from_settings(settings, sleep=sleep)


def build_provider(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ChainProvider:
    providers = [
        build_one(name, settings, metrics, sleep=sleep) for name in settings.provider_chain
    ]
    return ChainProvider(
        providers,
        breaker=CircuitBreaker(
            settings.provider_breaker_failures, settings.provider_breaker_cooldown_seconds, clock
        ),
        timeout_seconds=settings.provider_timeout_seconds,
        deadline_seconds=settings.provider_deadline_seconds,
        metrics=metrics,
        clock=clock,
    )
