"""The app under a real uvicorn server on 127.0.0.1: in the test's own event loop with its
lifespan (responses really stream; httpx's ASGI transport buffers one until it ends), or in a
thread without it (requests arrive on the wire exactly as written: httpx normalises `..`
segments and its ASGI transport decodes twice)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from tests.support.polling import DEADLINE_SECONDS, wait_until, wait_until_sync

# How long the servers keep an idle connection: longer than any test leaves one idle. With
# uvicorn's 5 s (httpx's own keep-alive expiry is 5 s too), a client that waited about 5 s,
# as one does while a thousand streams connect on a slow machine, could send its request
# on the connection just as the server closed it, and read nothing (httpx.ReadError).
KEEP_ALIVE_SECONDS = 4 * DEADLINE_SECONDS


@asynccontextmanager
async def live_server(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` (its lifespan included) in this event loop; yield its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        access_log=False,
        backlog=4096,  # room for a thousand clients connecting at once
        timeout_keep_alive=int(KEEP_ALIVE_SECONDS),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        assert not task.done(), "uvicorn stopped while starting"
        return server.started

    await wait_until(started, "uvicorn to start", interval=0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=DEADLINE_SECONDS)


class ServedApp:
    """Serve `app` on 127.0.0.1, a free port, in a daemon thread with an event loop of its own
    (its lifespan too, when `lifespan`: then synchronous clients can test the whole app)."""

    def __init__(self, app: FastAPI, *, lifespan: bool = False) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            lifespan="on" if lifespan else "off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=int(KEEP_ALIVE_SECONDS),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ServedApp:
        self._thread.start()

        def started() -> bool:
            assert self._thread.is_alive(), "uvicorn stopped while starting"
            return self._server.started

        wait_until_sync(started, "uvicorn to start", interval=0.01)
        return self

    @property
    def port(self) -> int:
        port: int = self._server.servers[0].sockets[0].getsockname()[1]
        return port

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=DEADLINE_SECONDS)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def raw_get(self, target: str) -> tuple[int, str, bytes]:
        """GET with the request target sent byte for byte (no client-side normalisation)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            request = f"GET {target} HTTP/1.1\r\nHost: atelier.test\r\nConnection: close\r\n\r\n"
            sock.sendall(request.encode("latin-1"))
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        return int(lines[0].split()[1]), headers.get("content-type", ""), body
