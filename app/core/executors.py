"""Bounded thread pools, one per kind of blocking work.

A call that blocks (a boto3 request, a file write, a Pillow render) runs in a pool of its
kind, never in the event loop's default executor: that one is shared by everything that
calls `asyncio.to_thread`, so six hung storage calls there would delay every token check
queued behind them. Each pool has a fixed number of threads; work beyond that waits in
its own queue, where it delays only work of the same kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class BlockingPool:
    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one thread")
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in one of the pool's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop taking work and drop what is queued; a call still running (a hung request)
        is not waited for: its thread ends when the call returns or times out."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class DaemonPool:
    """A bounded pool like BlockingPool, for calls that may hang past any deadline (a DNS
    lookup waits for the resolver's own timeout, up to ~30 s). Its threads are daemons, so
    a process on its way out never waits for one: ThreadPoolExecutor's threads are joined
    at exit, after the event loop has long given up on the call. A queued call whose caller
    has given up (cancelled) is skipped. Threads start on first use, in the process that
    uses them."""

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one thread")
        self.workers = workers
        self._name = name
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._started = False
        self._starting = threading.Lock()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in one of the pool's threads."""
        self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, functools.partial(fn, *args, **kwargs)))
        return await future

    def _start(self) -> None:
        with self._starting:
            if self._started:
                return
            for n in range(self.workers):
                name = f"{self._name}_{n}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
            self._started = True

    def _work(self) -> None:
        while True:
            loop, future, call = self._calls.get()
            if future.cancelled():  # a read of its state only: its caller has moved on
                continue
            try:
                outcome: tuple[Any, BaseException | None] = (call(), None)
            except BaseException as exc:  # every call is answered: the thread lives on
                outcome = (None, _deliverable(exc))
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: no one waits
                loop.call_soon_threadsafe(_settle, future, *outcome)


_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


def _deliverable(exc: BaseException) -> BaseException:
    """What a future can carry to the caller: not StopIteration (futures refuse it), nor
    SystemExit or KeyboardInterrupt, which would stop the caller's event loop."""
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc
    wrapped = RuntimeError(f"{type(exc).__name__} in a pool thread")
    wrapped.__cause__ = exc
    return wrapped


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
