"""What every image provider takes and gives, and the errors the worker tells apart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from app.core.job_errors import JobErrorCode

Kind = Literal["generate", "style", "edit"]
# How far the provider says it is, 0.0 to 1.0 (a queue's or a prediction's progress).
ProgressHook = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class ReferenceImage:
    data: bytes
    mime_type: str


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    kind: Kind = "generate"
    references: list[ReferenceImage] = field(default_factory=list)
    model: str | None = None  # a preferred model, tried first when the provider knows it
    # Called as the provider reports progress (never with less than before); may be absent.
    on_progress: ProgressHook | None = field(default=None, compare=False, repr=False)

    async def progress(self, fraction: float) -> None:
        if self.on_progress is not None:
            await self.on_progress(min(max(fraction, 0.0), 1.0))


@dataclass(frozen=True)
class ImageResult:
    data: bytes
    mime_type: str
    model: str  # the model that answered, as recorded on the job and the image


class ProviderError(Exception):
    """The provider did not produce an image. `retryable` says whether another attempt may;
    `code` is what the failed job shows (`Job.error_code`)."""

    retryable: bool = False
    code: JobErrorCode = "provider_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ContentRefused(ProviderError):
    """A safety block or an answer without an image: final, refunded, never retried."""

    retryable = False
    code: JobErrorCode = "content_refused"


class InvalidRequest(ProviderError):
    """The provider rejected the request itself (400): final, refunded."""

    retryable = False
    code: JobErrorCode = "invalid_request"


class ProviderUnavailable(ProviderError):
    """Every model was unavailable, rate-limited or failing: another attempt later may work."""

    retryable = True


class ImageProvider(Protocol):
    name: str

    def model_for(self, request: ImageRequest) -> str:
        """The model this provider would try first for `request` (metrics, the breaker)."""
        ...

    async def generate(self, request: ImageRequest) -> ImageResult: ...

    async def aclose(self) -> None: ...
