"""An upload answered before its body is read, over `atelier serve` and a raw socket.

The upload route reads its body only after the token is checked and the upload counted
(app/routers/generations.py), so a stranger's 401 comes before the image. These tests
check what a client sees on the wire then: an answer that says `Connection: close` (a
client holding its body back for `Expect: 100-continue` must not reuse the connection),
while a client already sending its body is left to finish and gets its answer on a
connection it can reuse, and a client that leaves mid-body costs the server no error.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.polling import wait_until_sync
from tests.support.serve import SERVE_STDERR, atelier_serve, on_test_database

MIB = 1024 * 1024
BOUNDARY = "early-answer"


@pytest.fixture
def served(db_url: str, data_dir: Path, tmp_path: Path) -> Iterator[tuple[str, int]]:
    with atelier_serve(
        tmp_path, **on_test_database(db_url, data_dir), LOG_JSON="true", WORKER_IN_PROCESS="false"
    ) as address:
        yield address


def upload_head(length: int, *extra: str) -> bytes:
    lines = [
        "POST /v1/uploads HTTP/1.1",
        "Host: atelier.test",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer_then_close(sock: socket.socket) -> tuple[bytes, bool]:
    """What the server sent, and whether it then closed the connection (rather than go on
    waiting for a body the client holds back)."""
    raw = b""
    try:
        while chunk := sock.recv(65536):
            raw += chunk
    except TimeoutError:
        return raw, False
    except ConnectionResetError:
        pass
    return raw, True


def test_a_strangers_upload_held_back_for_100_continue_gets_a_401_and_a_closed_connection(
    served: tuple[str, int],
) -> None:
    with socket.create_connection(served, timeout=10) as sock:
        sock.sendall(upload_head(9 * MIB, "Expect: 100-continue"))
        raw, closed = answer_then_close(sock)

    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 401 Unauthorized", raw[:300]
    assert b"connection: close" in rest.partition(b"\r\n\r\n")[0].lower(), raw[:600]
    assert b"100 Continue" not in raw  # the body was never asked for
    assert closed, "the server kept the connection open, waiting for the body"


def test_a_stranger_sending_the_whole_body_at_once_gets_its_401_and_a_usable_connection(
    served: tuple[str, int],
) -> None:
    """No `Expect`: the client is already writing its 9 MB when the 401 is sent. The server
    must not close under it (the reset would lose the answer: a client sees EPIPE, as Node's
    fetch did), but read and discard the rest, and keep the connection for the next request."""
    body = b"\x00" * (9 * MIB)
    with socket.create_connection(served, timeout=30) as sock:
        sending = threading.Thread(target=sock.sendall, args=(upload_head(len(body)) + body,))
        sending.start()
        sending.join(timeout=60)
        assert not sending.is_alive(), "the server stopped reading the body"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: atelier.test\r\nConnection: close\r\n\r\n")
        raw, _ = answer_then_close(sock)
    assert raw.startswith(b"HTTP/1.1 401 Unauthorized"), raw[:300]
    assert b"connection: close" not in raw.partition(b"\r\n\r\n")[0].lower()
    assert b"HTTP/1.1 200 OK" in raw, raw[-500:]  # the same connection answered again


@pytest.mark.parametrize("path", ["/v1/generations", "/v1/uploads"])
def test_a_body_declared_over_the_limit_is_a_413_and_the_connection_is_closed(
    served: tuple[str, int], auth_headers: Callable[..., dict[str, str]], path: str
) -> None:
    """The server does not go on to read (and discard) 300 MiB after its 413."""
    authorization = auth_headers("user_sends_too_much")["Authorization"]
    head = upload_head(300 * MIB, f"Authorization: {authorization}").replace(
        b"/v1/uploads", path.encode()
    )
    with socket.create_connection(served, timeout=10) as sock:
        sock.sendall(head + b"\x00" * MIB)
        raw, closed = answer_then_close(sock)
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large", raw[:300]
    assert b"connection: close" in rest.partition(b"\r\n\r\n")[0].lower(), raw[:600]
    assert closed, "the server kept reading the body after its 413"


def test_a_client_leaving_mid_upload_costs_no_error(
    served: tuple[str, int], auth_headers: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    authorization = auth_headers("user_leaves_mid_upload")["Authorization"]
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    with socket.create_connection(served, timeout=10) as sock:
        sock.sendall(upload_head(9 * MIB, f"Authorization: {authorization}"))
        sock.sendall(part + b"\x89PNG\r\n\x1a\n" + b"\x00" * MIB)
    host, port = served

    def logged() -> bool:  # the access line of the request it lost (written after the rest)
        return '"msg": "POST /v1/uploads ' in (tmp_path / SERVE_STDERR).read_text()

    wait_until_sync(logged, "the server to log the abandoned upload")
    log = (tmp_path / SERVE_STDERR).read_text()
    assert '"msg": "POST /v1/uploads 400"' in log, log[-3000:]  # as FastAPI's own reading
    assert '"level": "error"' not in log and "Traceback" not in log, log[-3000:]
    assert httpx.get(f"http://{host}:{port}/healthz", timeout=10).status_code == 200
