"""Bounded thread pools, one per kind of blocking work.

A call that blocks (a boto3 request, a file write, a Pillow render) runs in a pool of its
kind, never in the event loop's default executor: that one is shared by everything that
calls `asyncio.to_thread`, so six hung storage calls there would delay every token check
queued behind them. Each pool has a fixed number of threads; work beyond that waits in
its own queue, where it delays only work of the same kind.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

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
