"""`atelier serve` keeps an idle connection for HTTP_KEEP_ALIVE_SECONDS, then closes it.

uvicorn's own 5 s is shorter than what a proxy in front keeps its idle upstream connections
(nginx 60 s, AWS ALB 60 s): the proxy would then send a request on a connection the app is
closing at that moment, and answer a 502. The real command, over one client connection.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path

from tests.support.polling import DEADLINE_SECONDS
from tests.support.serve import atelier_serve, on_test_database

KEEP_ALIVE_SECONDS = 9
IDLE_SECONDS = 6.5  # past uvicorn's own 5 s, well short of the setting


def test_an_idle_connection_outlives_uvicorns_5_s_and_is_closed_after_the_setting(
    db_url: str, data_dir: Path, tmp_path: Path
) -> None:
    with atelier_serve(
        tmp_path,
        **on_test_database(db_url, data_dir),
        WORKER_IN_PROCESS="false",
        HTTP_KEEP_ALIVE_SECONDS=str(KEEP_ALIVE_SECONDS),
    ) as (host, port):
        connection = http.client.HTTPConnection(host, port, timeout=DEADLINE_SECONDS)
        try:
            connection.request("GET", "/healthz")
            assert connection.getresponse().read() and connection.sock is not None
            sock = connection.sock
            time.sleep(IDLE_SECONDS)
            sent = time.monotonic()  # the server's idle timer starts after this answer
            connection.request("GET", "/healthz")
            again = connection.getresponse()
            assert again.status == 200 and again.read()
            assert connection.sock is sock, "the request went on a new connection"
            # The server closes it once idle for the setting (the timeout reports a hang).
            assert sock.recv(1) == b"", "the server sent more than its answer"
            assert time.monotonic() - sent >= KEEP_ALIVE_SECONDS - 0.05
        finally:
            connection.close()
