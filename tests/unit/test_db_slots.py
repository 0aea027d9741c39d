"""Requests wait for a pooled connection first come, first served (app.deps.connection).

asyncpg's pool hands connections out through an asyncio.Queue: a connection released for a
waiter can be taken by a request that arrives in between, and the waiter goes to the back.
Under steady load some requests lost every time (bench/reads: a p99 over a second)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from fastapi import Request

from app.deps import connection
from app.observability import AFTER_RESPONSE_SCOPE_KEY


class OneConnectionPool:
    """A pool of one connection that hands it out the way asyncpg's does (an asyncio.Queue)."""

    def __init__(self) -> None:
        self._free: asyncio.Queue[str] = asyncio.Queue()
        self._free.put_nowait("conn")

    def get_max_size(self) -> int:
        return 1

    async def acquire(self) -> str:
        return await self._free.get()

    async def release(self, conn: str) -> None:
        self._free.put_nowait(conn)


def _request(pool: Any, slots: asyncio.Semaphore | None) -> Request:
    services = SimpleNamespace(pool=pool, db_slots=slots)
    app = SimpleNamespace(state=SimpleNamespace(services=services))
    # what RequestContextMiddleware gives each request: the callbacks run after its answer
    return cast(Request, SimpleNamespace(app=app, scope={AFTER_RESPONSE_SCOPE_KEY: []}))


async def _served_order(pool: Any, slots: asyncio.Semaphore) -> list[str]:
    order: list[str] = []
    first_holds = asyncio.Event()

    async def use(name: str) -> None:
        request = _request(pool, slots)
        await connection(request)
        order.append(name)
        first_holds.set()
        for _ in range(3):
            await asyncio.sleep(0)
        await request.scope[AFTER_RESPONSE_SCOPE_KEY].pop()()

    async def keep_alive_client() -> None:
        # like a client on a keep-alive connection: the next request as soon as one is done
        for i in range(3):
            await use(f"a{i}")

    async def late() -> None:
        await first_holds.wait()  # arrives while a0 holds the connection
        await use("b")

    await asyncio.gather(keep_alive_client(), late())
    return order


async def test_a_waiting_request_is_served_before_a_later_one() -> None:
    pool = OneConnectionPool()
    order = await _served_order(pool, asyncio.Semaphore(pool.get_max_size()))
    assert order == ["a0", "b", "a1", "a2"]


async def test_the_pool_alone_lets_later_requests_go_first() -> None:
    # What the semaphore is for: without it the waiting request is overtaken.
    unfair = await _served_order(OneConnectionPool(), asyncio.Semaphore(1000))
    assert unfair.index("b") > 1
