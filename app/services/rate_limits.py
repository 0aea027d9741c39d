"""Per-user rate limits on the requests that cost the most (generation submissions, uploads).

Counted with `limits` (async API) in this process's memory by default, or in Redis
(`RATE_LIMIT_STORAGE_URL=redis://…`) so that every API instance draws on one budget.

Strategy: moving window. It counts exactly the requests of the last window, so there is no
burst of twice the limit across a window boundary (fixed window), and no estimate (sliding
window counter); and it knows when the oldest counted request leaves the window, which is
an exact `Retry-After`. Its price is one stored timestamp per counted request: with limits
of tens per minute, tens of entries per user.

Redis down: the check fails open (the request goes through, without RateLimit headers) and
a warning is logged, at most once a minute. The limit only spreads load; the credits,
debited in PostgreSQL, are what bounds spending, so a Redis outage must not stop the product.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from dataclasses import dataclass
from typing import Literal, cast

import limits
import redis.asyncio
from limits.aio.storage import MemoryStorage, MovingWindowSupport, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from app.config import Settings
from app.errors import TooManyRequests, Unprocessable
from app.observability import carried_headers

log = logging.getLogger("atelier.rate_limits")

Scope = Literal["generations", "uploads"]

HEADER_NAMES = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")
# A Redis that does not answer must not hold requests up: one short try, no retries.
REDIS_TIMEOUT_SECONDS = 0.5
WARN_INTERVAL_SECONDS = 60.0
# How often the in-memory counts are swept of entries whose window has passed.
SWEEP_SECONDS = 10.0


@dataclass(frozen=True)
class Quota:
    """Where a caller stands after a request was counted."""

    limit: int
    remaining: int
    reset_seconds: int  # until the oldest counted request leaves the window
    window_seconds: int

    def headers(self) -> dict[str, str]:
        """The fields of draft-ietf-httpapi-ratelimit-headers-06 (delta seconds in Reset)."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
            "RateLimit-Policy": f"{self.limit};w={self.window_seconds}",
        }


class RateLimited(TooManyRequests):
    """The 429 of a spent budget, with the caller's quota. Retry-After is when the refused
    request would pass: the quota's reset for one, later for a set that needs more room
    than the oldest counted request leaving makes."""

    def __init__(
        self,
        scope: Scope,
        item: limits.RateLimitItem,
        quota: Quota,
        retry_after_seconds: int | None = None,
        cost: int = 1,
    ) -> None:
        wait = quota.reset_seconds if retry_after_seconds is None else retry_after_seconds
        retry_after = max(1, wait)
        window = _window_text(item)
        if cost > 1:  # a set says what it counts as: "22 left" beside a refusal would puzzle
            said = (
                f"This request counts as {cost} {scope}, and {quota.remaining} of the "
                f"{item.amount} per {window} are left; retry in {retry_after} s."
            )
        else:
            said = f"At most {item.amount} {scope} per {window}; retry in {retry_after} s."
        super().__init__(
            said,
            headers={"Retry-After": str(retry_after), **quota.headers()},
            limit=item.amount,
            window_seconds=quota.window_seconds,
            retry_after=retry_after,
        )
        self.quota = quota


class LoopMemoryStorage(MemoryStorage):
    """`limits`' in-memory storage with a cheap clean-up.

    Upstream (limits 5.8) starts a clean-up task after every hit, and it hops to the default
    thread pool once per key (`asyncio.to_thread` around a bisect): with 16 users at 600
    submissions/s that was a fifth of the server's CPU (bench/submit_vs_pgbench, py-spy),
    and it queued in the pool that storage and token checks use. Counting never depends on
    the clean-up (a moving window ignores old entries; a counter checks its own expiry), so
    here it runs inline, on the loop, at most every SWEEP_SECONDS. It overrides the private
    (name-mangled) hook upstream calls; tests/api/test_rate_limits.py checks it still is.
    """

    _next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_SECONDS
        self.sweep(now)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """Upstream's, looking at the newest `limit` entries only, as the Redis storage's
        script does: the oldest of them still in the window and how many are. With
        `limit` below the item's amount it says when `limit` more would fit
        (RateLimiter.hit's Retry-After for a set); with the amount itself it is upstream's
        answer, since no more than that many are ever in a window."""
        timestamp = time.time()
        events = self.events.get(key, [])[:limit]
        if events:
            cutoff = -(timestamp - expiry)  # newest first: those in the window are a prefix
            inside = bisect.bisect_left(events, cutoff, key=lambda entry: -entry.atime)
            if inside:
                return events[inside - 1].atime, inside
        return timestamp, 0

    def sweep(self, now: float) -> None:
        """Drop the entries and counters whose window has passed."""
        for key, entries in list(self.events.items()):
            # newest first: the entries still in a window are a prefix
            kept = bisect.bisect_left(entries, -now, key=lambda entry: -entry.expiry)
            if kept:
                del entries[kept:]
            else:
                self.events.pop(key, None)
                self.locks.pop(key, None)
        for key, expires in list(self.expirations.items()):
            if expires <= now:
                self.storage.pop(key, None)
                self.expirations.pop(key, None)
                self.locks.pop(key, None)


class RateLimiter:
    """Counts each caller's requests per scope; over the limit, raises RateLimited."""

    def __init__(
        self,
        items: dict[Scope, limits.RateLimitItem],
        storage: Storage,
        pool: redis.asyncio.ConnectionPool | None = None,
    ) -> None:
        self._items = items
        self._storage = storage
        self._strategy = MovingWindowRateLimiter(storage)
        self._pool = pool
        self._warned_at = -math.inf

    async def hit(self, scope: Scope, user_id: str, cost: int = 1) -> Quota | None:
        """Count a request of `user_id` as `cost` requests (a pack's set of N icons is N);
        None when `scope` has no limit or storage is down."""
        item = self._items.get(scope)
        if item is None:
            return None
        if cost > item.amount:  # no wait would let it through: say so instead of a 429
            raise Unprocessable(
                f"This request counts as {cost} {scope}, more than the limit of {item.amount} "
                f"per {_window_text(item)}; send fewer at once.",
                limit=item.amount,
                cost=cost,
            )
        try:
            allowed = await self._strategy.hit(item, scope, user_id, cost=cost)
            # A second call: `limits` returns no window state with a hit. A refused hit
            # counts nothing, so the state read now is the one the refusal was made on.
            stats = await self._strategy.get_window_stats(item, scope, user_id)
        except StorageError as exc:
            self._warn(repr(exc.storage_error))
            return None
        quota = Quota(
            limit=item.amount,
            remaining=max(0, stats.remaining),
            reset_seconds=max(0, math.ceil(stats.reset_time - time.time())),
            window_seconds=item.get_expiry(),
        )
        carried = carried_headers.get()
        if carried is not None:  # every answer from now on says where the caller stands
            carried.update(quota.headers())
        if not allowed:
            wait = None
            if cost > 1:  # the oldest leaving may not make room for all of them
                wait = await self._seconds_until_room(item, scope, user_id, cost)
            raise RateLimited(scope, item, quota, wait, cost)
        return quota

    async def _seconds_until_room(
        self, item: limits.RateLimitItem, scope: Scope, user_id: str, cost: int
    ) -> int | None:
        """Seconds until `cost` more fit: a hit of `cost` passes once the counted request
        `item.amount - cost` places behind the newest has left the window (what the moving
        window's acquire checks), so the oldest of the newest `amount - cost + 1` is the
        one to wait for. None when storage does not answer (the quota's reset is used)."""
        expiry = item.get_expiry()
        behind = item.amount - cost + 1
        try:
            oldest, counted = await cast(MovingWindowSupport, self._storage).get_moving_window(
                item.key_for(scope, user_id), behind, expiry
            )
        except StorageError as exc:
            self._warn(repr(exc.storage_error))
            return None
        if counted < behind:  # the one to wait for left the window since: it would pass now
            return 0
        return max(0, math.ceil(oldest + expiry - time.time()))

    async def check_storage(self) -> None:
        """Warn (do not fail) when the storage does not answer a PING, e.g. at startup."""
        if not await self._storage.check():  # never raises: False on any error
            self._warn("it does not answer PING")

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    def _warn(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._warned_at < WARN_INTERVAL_SECONDS:
            return
        self._warned_at = now
        log.warning("rate-limit storage unavailable, requests are not limited: %s", reason)


def _window_text(item: limits.RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


def _items(settings: Settings) -> dict[Scope, limits.RateLimitItem]:
    configured: dict[Scope, str] = {
        "generations": settings.rate_limit_generations,
        "uploads": settings.rate_limit_uploads,
    }
    return {scope: limits.parse(text) for scope, text in configured.items() if text}


def build_limiter(settings: Settings) -> RateLimiter:
    """The limiter RATE_LIMIT_* describe (no I/O: a Redis connection opens on first use)."""
    items = _items(settings)
    url = settings.rate_limit_storage_url
    redis_url = url.get_secret_value() if url is not None else "memory://"
    if redis_url.startswith("memory://"):
        return RateLimiter(items, LoopMemoryStorage())
    # Our own pool: short timeouts, no retries (redis-py's client would retry with backoff
    # for seconds), and something to close in the lifespan (limits' storage has no close).
    pool = redis.asyncio.ConnectionPool.from_url(
        redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )
    storage = RedisStorage(
        "async+" + redis_url,
        implementation="redispy",
        key_prefix=settings.rate_limit_key_prefix,
        wrap_exceptions=True,
        # passed on to redis.asyncio.Redis(connection_pool=...), whatever the annotation says
        connection_pool=pool,  # type: ignore[arg-type]
    )
    return RateLimiter(items, storage, pool)
