"""The one place a provider is chosen from settings."""

from __future__ import annotations

from app.config import Settings
from app.services.providers.base import ImageProvider
from app.services.providers.gemini import GeminiProvider
from app.services.providers.local import LocalProvider


def build_provider(settings: Settings) -> ImageProvider:
    if settings.provider == "local":
        return LocalProvider.from_settings(settings)
    if settings.provider == "gemini":
        return GeminiProvider.from_settings(settings)  # refuses to start without a key
    raise ValueError(f"PROVIDER={settings.provider} is not implemented yet")
