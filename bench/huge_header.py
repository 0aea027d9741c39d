"""(e) A huge request header: how much the server reads, and its memory, before refusing.

Runs uvicorn in a child process on a trivial ASGI app (answers 401, as /v1/me would),
once with plain httptools (uvicorn's default) and once with app.serving's head-limited
protocol (what `atelier serve` runs), and sends one request whose Authorization header is
--megabytes long over a raw socket. Reports how many bytes the client got to send before
the server answered or cut the connection, the first bytes of the answer, the wall time,
and the server's peak RSS growth. No database is needed.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import psutil

CHILD = """
import sys, uvicorn
from app.serving import http_protocol

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b"refused"})

http = "httptools" if sys.argv[2] == "httptools" else http_protocol(int(sys.argv[3]))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=http, log_level="error",
            lifespan="off")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(protocol: str, size: int, limit: int) -> dict[str, object]:
    port = _free_port()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port), protocol, str(limit)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        server = psutil.Process(child.pid)
        rss_before = server.memory_info().rss
        peak = rss_before
        sent, started = 0, time.perf_counter()
        block = b"a" * 65536
        answer = b""
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n")
            sock.sendall(b"Authorization: Bearer ")
            try:
                while sent < size:
                    sock.sendall(block)
                    sent += len(block)
                    if sent % (16 * len(block)) == 0:
                        peak = max(peak, server.memory_info().rss)
                sock.sendall(b"\r\n\r\n")
                answer = sock.recv(64)
            except OSError as exc:
                try:
                    answer = sock.recv(64)
                except OSError:
                    answer = repr(exc).encode()
        elapsed = time.perf_counter() - started
        peak = max(peak, server.memory_info().rss)
        return {
            "protocol": protocol,
            "sent_mb": round(sent / 1e6, 1),
            "answer": answer.split(b"\r\n")[0].decode(errors="replace"),
            "seconds": round(elapsed, 2),
            "rss_growth_mb": round((peak - rss_before) / 1e6, 1),
        }
    finally:
        child.terminate()
        child.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--limit", type=int, default=32 * 1024, help="MAX_HEADER_BYTES")
    args = parser.parse_args()
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for protocol in ("httptools", "head-limited"):
        print(_run(protocol, args.megabytes * 1024 * 1024, args.limit))


if __name__ == "__main__":
    main()
