"""Deadlines instead of fixed sleeps: poll a condition until it holds or time runs out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

DEADLINE_SECONDS = 30.0  # a guard against hanging, never a speed requirement


async def wait_until(
    check: Callable[[], Awaitable[bool] | bool],
    what: str,
    seconds: float = DEADLINE_SECONDS,
    interval: float = 0.05,
) -> None:
    """Poll `check` (a plain or an async callable) until it is true; fail naming `what`."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(interval)


def wait_until_sync(
    check: Callable[[], bool],
    what: str,
    seconds: float = DEADLINE_SECONDS,
    interval: float = 0.05,
) -> None:
    """`wait_until` outside an event loop (a thread or a process being waited for)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(interval)
