"""One LISTEN connection per process, fanned out to in-process subscribers.

PostgreSQL NOTIFY carries job progress (and later the feed) between processes, so any API
instance can stream what any worker does, with no broker besides the database. Each
subscriber has a small bounded queue: a slow client loses intermediate events (it is told
to resync) instead of growing memory without limit.

A notification is parsed once per process into one `Event` that every subscriber receives;
what they send for it (an SSE frame, a feed item) is built once on that event and shared.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

log = logging.getLogger("atelier.realtime")

JOBS_CHANNEL = "atelier_jobs"  # every change of a job: its streams
FEED_CHANNEL = "atelier_feed"  # the public gallery's changes
QUEUE_CHANNEL = "atelier_queue"  # a job was queued: what wakes an idle worker
# a user's row or an API key changed: what the API's caches forget (app.services.cache_notices)
FORGET_CHANNEL = "atelier_forget"
ALL_CHANNELS = (JOBS_CHANNEL, FEED_CHANNEL, QUEUE_CHANNEL, FORGET_CHANNEL)
WORKER_CHANNELS = (QUEUE_CHANNEL,)  # all that a process running only a worker listens to
RESYNC: dict[str, Any] = {"resync": True}  # sent after a reconnect or an overflow
_QUEUE_SIZE = 64

T = TypeVar("T")


class Event(dict[str, Any]):
    """One notification's payload, as every subscriber of the process receives it (the same
    object): a dict, plus what the subscribers built from it, kept once per `key`."""

    __slots__ = ("_built",)

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        self._built: dict[Hashable, Any] = {}

    def once(self, key: Hashable, build: Callable[[], T]) -> T:
        """`build()` on the first call for `key`; later calls get that same result. For
        async work, `build` starts a task and callers await it (shielded): one run for all."""
        if key in self._built:
            found: T = self._built[key]
            return found
        value = self._built[key] = build()
        return value


class Subscription:
    def __init__(self, channel: str, key: str | None) -> None:
        self.channel = channel
        self.key = key
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE_SIZE)

    def offer(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Drop the backlog and ask the reader to re-read the current state.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)

    async def get(self, wait_seconds: float | None = None) -> dict[str, Any] | None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for runs the get in a task of its own,
        # one more hop per event and stream when a thousand streams wait on one event.
        try:
            async with asyncio.timeout(wait_seconds):
                return await self.queue.get()
        except TimeoutError:
            return None


class Hub:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channels: tuple[str, ...] = ALL_CHANNELS,
        reconnect_seconds: float = 1.0,
    ) -> None:
        self._connect = connect
        self._channels = channels
        self._reconnect = reconnect_seconds
        self._subs: dict[tuple[str, str | None], set[Subscription]] = defaultdict(set)
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="realtime-hub")
        await asyncio.wait_for(self._ready.wait(), timeout=30)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    @asynccontextmanager
    async def subscribe(self, channel: str, key: str | None = None) -> AsyncIterator[Subscription]:
        """Events on `channel` whose payload `id` is `key` (every event when key is None)."""
        sub = Subscription(channel, key)
        self._subs[(channel, key)].add(sub)
        try:
            yield sub
        finally:
            subs = self._subs.get((channel, key))
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[(channel, key)]

    def _dispatch(self, channel: str, payload: str) -> None:
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            log.warning("ignored a malformed notification on %s", channel)
            return
        event = Event(parsed)
        targets = list(self._subs.get((channel, None), ()))
        key = event.get("id")
        if key is not None:
            targets += self._subs.get((channel, str(key)), ())
        for sub in targets:
            sub.offer(event)

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self._dispatch(channel, payload)

    def _on_terminate(self, _conn: object) -> None:
        self._lost.set()

    async def _run(self) -> None:
        first = True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                for channel in self._channels:
                    await conn.add_listener(channel, self._on_notify)
                conn.add_termination_listener(self._on_terminate)
                self._conn = conn
                self._lost.clear()
                self._ready.set()
                if not first:  # events may have been missed while disconnected
                    for subs in list(self._subs.values()):
                        for sub in list(subs):
                            sub.offer(RESYNC)
                first = False
                await self._watch(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection errors of every kind: retry
                log.warning("realtime connection lost (%s); reconnecting", exc)
            finally:
                # A connection that failed a check may still be open with its listeners:
                # left alone it would deliver every event a second time after the reconnect.
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(self._reconnect)

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return when the connection is gone (terminated, or a liveness check failed)."""
        while not conn.is_closed():
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=15)
                break
            except TimeoutError:
                await conn.fetchval("SELECT 1")  # liveness check; raises when the link is dead
        if not conn.is_closed():
            conn.terminate()
