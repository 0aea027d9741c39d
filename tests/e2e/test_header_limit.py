"""`atelier serve` refuses an oversized request head without reading it all.

httptools sets no limit on a request's head, so before app.serving a 50 MB Authorization
header was read in full and only then refused by the app. These tests run the real command
on loopback and write the request over a raw socket, byte for byte.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.services.auth import MAX_TOKEN_LENGTH
from tests.support.serve import atelier_serve, on_test_database

LIMIT = 32 * 1024  # MAX_HEADER_BYTES for these tests
HUGE = 50 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture
def served(db_url: str, data_dir: Path, tmp_path: Path) -> Iterator[tuple[str, int]]:
    with atelier_serve(
        tmp_path,
        **on_test_database(db_url, data_dir),
        LOG_JSON="false",
        WORKER_IN_PROCESS="false",
        MAX_HEADER_BYTES=str(LIMIT),
    ) as address:
        yield address


def head(token_length: int) -> bytes:
    return (
        "GET /v1/me HTTP/1.1\r\nHost: atelier.test\r\nConnection: close\r\n"
        f"Authorization: Bearer {'a' * token_length}\r\n\r\n"
    ).encode("ascii")


def read_all(sock: socket.socket) -> bytes:
    """What the server sent before it closed (a reset after its answer ends the read)."""
    raw = b""
    try:
        while chunk := sock.recv(65536):
            raw += chunk
    except ConnectionResetError:
        pass
    return raw


def test_a_50_mb_authorization_header_is_refused_before_the_client_has_sent_it(
    served: tuple[str, int],
) -> None:
    sent = 0
    refused_while_sending = False
    with socket.create_connection(served, timeout=30) as sock:
        sock.sendall(
            b"GET /v1/me HTTP/1.1\r\nHost: atelier.test\r\nConnection: close\r\n"
            b"Authorization: Bearer "
        )
        block = b"a" * CHUNK
        try:
            while sent < HUGE:
                sock.sendall(block)
                sent += len(block)
            sock.sendall(b"\r\n\r\n")  # a server that read it all answers now (a 401)
        except (BrokenPipeError, ConnectionResetError):
            refused_while_sending = True
        answer = read_all(sock)
    # The server closed the connection while the client was still sending: it did not read
    # the 50 MB (socket buffers hold a few MB at most).
    assert refused_while_sending, f"the server read all {sent} bytes"
    assert sent < HUGE
    # Whether the 431 reaches the client before the reset is up to the kernel's timing.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    host, port = served
    assert httpx.get(f"http://{host}:{port}/healthz", timeout=10).status_code == 200


def test_a_head_over_the_limit_sent_whole_is_a_431_problem(served: tuple[str, int]) -> None:
    with socket.create_connection(served, timeout=30) as sock:
        sock.sendall(head(LIMIT + 1024))
        answer = read_all(sock)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:200]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in headers.lower()
    problem = json.loads(body)
    assert problem["status"] == 431
    assert problem["type"].endswith("/headers-too-large")


def test_a_token_over_the_app_limit_inside_the_header_limit_is_a_401(
    served: tuple[str, int],
) -> None:
    assert MAX_TOKEN_LENGTH + 1024 < LIMIT
    host, port = served
    response = httpx.get(
        f"http://{host}:{port}/v1/me",
        headers={"Authorization": "Bearer " + "a" * (MAX_TOKEN_LENGTH + 1)},
        timeout=10,
    )
    assert response.status_code == 401, response.text
    assert "longer than" in response.json()["detail"]


def test_a_body_larger_than_the_head_limit_arriving_with_its_head_is_not_refused(
    served: tuple[str, int], auth_headers: Callable[..., dict[str, str]]
) -> None:
    # Only the head counts: a body sent in the same write as the head must not be taken
    # for part of it.
    body = json.dumps({"kind": "generate", "prompt": "x" * (8 * LIMIT)}).encode()
    request = (
        "POST /v1/generations HTTP/1.1\r\nHost: atelier.test\r\nConnection: close\r\n"
        f"Authorization: {auth_headers('user_bighead')['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection(served, timeout=30) as sock:
        sock.sendall(request + body)
        answer = read_all(sock)
    status = answer.partition(b"\r\n")[0]
    assert status == b"HTTP/1.1 422 Unprocessable Entity", answer[:300]
