"""A route's pooled connection (`Conn`) goes back to the pool however its request ends.

`app.deps.connection` is a plain dependency whose release RequestContextMiddleware runs after
the answer (`observability.after_response`), not a generator dependency: these tests are the
promise a generator's `finally` used to keep. Each runs the whole app, with a few routes of
its own that take `Conn`, on a pool of two connections (and no in-process worker, which would
hold some of them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request

from app.config import Settings
from app.deps import Conn, Services, connection
from app.errors import NotFound
from app.main import create_app

POOL = 2
ROUNDS = 3 * POOL  # more requests than connections: a leak shows as a wait that never ends
WAIT = 10.0


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    application = create_app(
        make_settings(db_pool_min_size=1, db_pool_max_size=POOL, worker_in_process=False)
    )
    entered = asyncio.Event()

    async def answers(conn: Conn) -> dict[str, int]:
        return {"one": await conn.fetchval("SELECT 1")}

    async def refuses(conn: Conn) -> None:
        await conn.fetchval("SELECT 1")
        raise NotFound("Nothing here.")

    async def crashes(conn: Conn) -> None:
        await conn.fetchval("SELECT 1")
        raise RuntimeError("a bug")

    async def fails_in_sql(conn: Conn) -> None:
        await conn.fetchval("SELECT 1/0")

    async def validates(conn: Conn, n: int) -> None:  # `n` missing: a 422, Conn taken first
        await conn.fetchval("SELECT 1")

    async def hangs(conn: Conn) -> None:
        entered.set()
        await asyncio.Event().wait()

    for path, endpoint in (
        ("/test/answers", answers),
        ("/test/refuses", refuses),
        ("/test/crashes", crashes),
        ("/test/fails-in-sql", fails_in_sql),
        ("/test/validates", validates),
        ("/test/hangs", hangs),
    ):
        application.add_api_route(path, endpoint, methods=["GET"])
    application.state.hang_entered = entered
    async with application.router.lifespan_context(application):
        yield application
        if _in_use(application):
            # a leaked connection: the lifespan's pool.close() would wait for it for ever
            _services(application).pool.terminate()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # raise_app_exceptions=False: a crash is answered with a 500, as a server answers it
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://atelier.test") as c:
        yield c


def _services(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


def _in_use(app: FastAPI) -> int:
    pool = _services(app).pool
    in_use: int = pool.get_size() - pool.get_idle_size()
    return in_use


def _slots_free(app: FastAPI) -> int:
    slots = _services(app).db_slots
    assert slots is not None
    free: int = slots._value  # asyncio.Semaphore keeps no public count
    return free


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/test/answers", 200),
        ("/test/refuses", 404),
        ("/test/crashes", 500),
        ("/test/fails-in-sql", 500),
        ("/test/validates", 422),
    ],
)
async def test_the_connection_goes_back_after_every_kind_of_answer(
    app: FastAPI, client: httpx.AsyncClient, path: str, status: int
) -> None:
    async with asyncio.timeout(WAIT):
        for _ in range(ROUNDS):
            response = await client.get(path)
            assert response.status_code == status, response.text
            assert _in_use(app) == 0
    assert _slots_free(app) == POOL


async def test_a_cancelled_request_gives_its_connection_back(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    for _ in range(ROUNDS):
        app.state.hang_entered.clear()
        hanging = asyncio.create_task(client.get("/test/hangs"))
        async with asyncio.timeout(WAIT):
            await app.state.hang_entered.wait()
        assert _in_use(app) == 1
        assert _slots_free(app) == POOL - 1
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        assert _in_use(app) == 0
        assert _slots_free(app) == POOL
    # and the pool still serves
    async with asyncio.timeout(WAIT):
        assert (await client.get("/test/answers")).json() == {"one": 1}


async def test_a_request_cancelled_for_good_gives_back_and_is_still_logged(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    # anyio's cancellation is level-triggered: every await in the scope is cancelled again,
    # the clean-up's included. The connection still goes back (asyncpg shields its release)
    # and the request still gets its access-log line.
    caplog.set_level(logging.INFO, logger="atelier.access")
    for _ in range(ROUNDS):
        with anyio.move_on_after(0.3):
            await client.get("/test/hangs")
        assert _in_use(app) == 0
        assert _slots_free(app) == POOL
    lines = [r.getMessage() for r in caplog.records if r.name == "atelier.access"]
    assert lines.count("GET /test/hangs 500") == ROUNDS, lines


async def test_without_the_middleware_the_dependency_refuses_and_holds_nothing(
    app: FastAPI,
) -> None:
    request = Request({"type": "http", "app": app, "headers": [], "method": "GET"})
    with pytest.raises(RuntimeError, match="RequestContextMiddleware"):
        await connection(request)
    assert _in_use(app) == 0
    assert _slots_free(app) == POOL
