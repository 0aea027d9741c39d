"""What the queue-style providers (fal, Replicate) share: one retry policy, and fetching the
image their answer points at.

Retry policy (the same rules as Gemini's): a rate limit (429), a server error (5xx, 408), a
timeout or a connection error is `Retryable`; the call is tried again up to
`PROVIDER_RETRIES` more times, waiting the server's `Retry-After` or backing off 0.5 s, 1 s,
2 s ..., never longer than `PROVIDER_MAX_RETRY_DELAY_SECONDS`; then `ProviderUnavailable`,
so the chain moves on to the next provider. Anything else is final at once.

Output images: the provider answers with a URL, which this service fetches itself. That URL
comes from outside, so it is only followed over https, to a host in `PROVIDER_OUTPUT_HOSTS`
(or a subdomain of one: fal's and Replicate's CDNs by default), without credentials, through
at most three redirects each checked the same way, and read up to
`PROVIDER_OUTPUT_MAX_BYTES`. The client that fetches it sends no provider key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

from app.services.providers.base import ProviderUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

BACKOFF_BASE_SECONDS = 0.5
MAX_REDIRECTS = 3
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class Retryable(Exception):
    """A failure another try may get past: rate limited, a server error, a timeout."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def retry_after_seconds(headers: httpx.Headers | dict[str, str]) -> float | None:
    """A `Retry-After` header in seconds (delta or HTTP date), if there is one."""
    value = (headers.get("retry-after") or headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2
    max_delay_seconds: float = 20.0
    sleep: Sleep = asyncio.sleep

    async def run(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, tried again on `Retryable`; ProviderUnavailable once retries run out."""
        failures = 0
        while True:
            try:
                return await call()
            except Retryable as exc:
                if failures >= self.retries:
                    raise ProviderUnavailable(f"{what}: {exc.reason}") from exc
                backoff = BACKOFF_BASE_SECONDS * 2**failures
                asked = exc.retry_after
                delay = min(backoff if asked is None else asked, self.max_delay_seconds)
                failures += 1
                log.info("%s failed (%s); retry %d in %.1f s", what, exc.reason, failures, delay)
                await self.sleep(delay)


def transport_failure(exc: httpx.TransportError) -> Retryable:
    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"
    return Retryable(f"{type(exc).__name__} ({kind})")


def output_client(timeout_seconds: float) -> httpx.AsyncClient:
    """The client output images are fetched with: no provider credentials, no redirects
    followed by itself (each hop is checked), TLS verified as for every outbound call."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds)),
        follow_redirects=False,
    )


def normalise_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    return tuple(h.strip().lower().strip(".") for h in hosts if h.strip().strip("."))


def allowed_output_url(url: str, hosts: Sequence[str]) -> bool:
    """https, no credentials, a host in `hosts` or below one of them."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    if parts.scheme != "https" or not host or parts.username or parts.password:
        return False
    return any(host == allowed or host.endswith("." + allowed) for allowed in hosts)


async def fetch_output(
    client: httpx.AsyncClient, url: object, *, hosts: Sequence[str], max_bytes: int, what: str
) -> tuple[bytes, str]:
    """The bytes (and Content-Type) at the provider's output URL. A URL refused by the rules
    above or an answer that is not an image is `ProviderUnavailable` (that provider's answer
    is unusable; another may draw it); 429/5xx/timeouts are `Retryable`."""
    if not isinstance(url, str) or not allowed_output_url(url, hosts):
        shown = url[:200] if isinstance(url, str) else type(url).__name__
        raise ProviderUnavailable(
            f"{what} answered with an image URL this service refuses: {shown}"
        )
    current: str = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with client.stream("GET", current) as response:
                if response.is_redirect:
                    target = urljoin(current, response.headers.get("location", ""))
                    if not allowed_output_url(target, hosts):
                        raise ProviderUnavailable(
                            f"{what}'s image URL redirects where this service does not follow"
                        )
                    current = target
                    continue
                if response.status_code in RETRYABLE_STATUSES:
                    raise Retryable(
                        f"fetching the image: HTTP {response.status_code}",
                        retry_after_seconds(response.headers),
                    )
                if response.status_code != 200:
                    raise ProviderUnavailable(
                        f"{what}'s image could not be fetched: HTTP {response.status_code}"
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise ProviderUnavailable(f"{what}'s image is larger than {max_bytes} bytes")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ProviderUnavailable(
                            f"{what}'s image is larger than {max_bytes} bytes"
                        )
                    chunks.append(chunk)
                mime = response.headers.get("content-type", "").split(";")[0].strip()
                return b"".join(chunks), mime or "application/octet-stream"
        except httpx.TransportError as exc:
            raise transport_failure(exc) from exc
    raise ProviderUnavailable(f"{what}'s image URL redirects more than {MAX_REDIRECTS} times")
