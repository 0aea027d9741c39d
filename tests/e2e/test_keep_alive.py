"""`atelier serve` keeps an idle connection for HTTP_KEEP_ALIVE_SECONDS, then closes it.

uvicorn's own 5 s is shorter than what a proxy in front keeps its idle upstream connections
(nginx 60 s, AWS ALB 60 s): the proxy would then send a request on a connection the app is
closing at that moment, and answer a 502. The real command, over a raw socket.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.support.polling import DEADLINE_SECONDS
from tests.support.serve import atelier_serve, on_test_database

KEEP_ALIVE_SECONDS = 7  # past uvicorn's own 5 s, short enough to see the close
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: atelier.test\r\n\r\n"


def answer(sock: socket.socket) -> bytes:
    """One whole answer to `REQUEST` (its body is short and sized)."""
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < length(raw):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection mid-answer: {raw!r}"
        raw += chunk
    return raw


def length(raw: bytes) -> int:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no Content-Length: {raw!r}")


def test_an_idle_connection_outlives_uvicorns_5_s_and_is_closed_after_the_setting(
    db_url: str, data_dir: Path, tmp_path: Path
) -> None:
    with (
        atelier_serve(
            tmp_path,
            **on_test_database(db_url, data_dir),
            WORKER_IN_PROCESS="false",
            HTTP_KEEP_ALIVE_SECONDS=str(KEEP_ALIVE_SECONDS),
        ) as address,
        socket.create_connection(address, timeout=DEADLINE_SECONDS) as sock,
    ):
        sock.sendall(REQUEST)
        assert answer(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(5.5)
        sock.sendall(REQUEST)  # on the same connection, idle longer than uvicorn's default
        assert answer(sock).startswith(b"HTTP/1.1 200 ")
        idle_since = time.monotonic()
        assert sock.recv(65536) == b"", "the server sent more than its answer"
        idle_for = time.monotonic() - idle_since
        # Closed by the server once idle for the setting (the timeout bounds a hang).
        assert KEEP_ALIVE_SECONDS - 1 < idle_for < DEADLINE_SECONDS, idle_for
