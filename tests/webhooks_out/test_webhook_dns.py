"""A webhook host whose DNS answers slowly (anyone can register one) holds threads of the
sender's own resolver pool, never the event loop's getaddrinfo, which the database pool's
new connections and the providers' clients wait on."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from app.services import webhook_urls

SLOW = "slow-dns.hooks.test"


async def test_slow_webhook_lookups_leave_the_loops_resolver_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sixteen lookups of a name whose resolver hangs (more than the loop's default
    executor has threads): the loop still resolves another name at once."""
    release = threading.Event()
    resolve = socket.getaddrinfo

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == SLOW:
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    stuck = [asyncio.create_task(webhook_urls.lookup(SLOW, 443)) for _ in range(16)]
    try:
        await asyncio.sleep(0.1)  # the lookups have taken their threads
        loop = asyncio.get_running_loop()
        found = await asyncio.wait_for(loop.getaddrinfo("localhost", 5432), 5)
        assert found
        assert not any(task.done() for task in stuck)
    finally:
        release.set()
        ended = await asyncio.gather(*stuck, return_exceptions=True)
    assert all(isinstance(result, socket.gaierror) for result in ended), ended
