"""`atelier serve --workers N`: N processes answer on one port, on the embedded database
that the parent started once (and stops once they are gone)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psutil

from tests.fakes.running import json_lines
from tests.support.serve import (
    SERVE_STDERR,
    clean_env,
    free_port,
    start_serve,
    wait_until_ready,
)


def listeners(parent: psutil.Process, port: int) -> set[int]:
    """The processes under `parent` that accept connections on `port`."""
    found = set()
    for child in parent.children(recursive=True):
        try:
            sockets = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets):
            found.add(child.pid)
    return found


def test_serve_with_two_workers_answers_from_two_processes_on_the_embedded_database(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    port = free_port()
    env = clean_env(DATA_DIR=str(data), WORKER_IN_PROCESS="false", LOG_JSON="false")
    server = start_serve(tmp_path, port, env, "--workers", "2")
    try:
        wait_until_ready(server, f"http://127.0.0.1:{port}", tmp_path / SERVE_STDERR)
        parent = psutil.Process(server.pid)
        workers = listeners(parent, port)
        assert len(workers) == 2, workers
        # Fresh connections, spread by the kernel: every one is answered, from the database.
        for _ in range(10):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                assert client.get("/readyz").status_code == 200
        pgdata = str((data / "pg").resolve())
        postmasters = [
            p
            for p in psutil.process_iter(["cmdline"])
            if pgdata in " ".join(p.info["cmdline"] or ()) and "-D" in (p.info["cmdline"] or ())
        ]
        assert len(postmasters) == 1, [p.info["cmdline"] for p in postmasters]  # started once
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0, (tmp_path / SERVE_STDERR).read_text(errors="replace")[-3000:]
    _, alive = psutil.wait_procs(postmasters, timeout=30)
    assert not alive, "the embedded server outlived serve"


def test_each_worker_process_writes_its_last_log_lines_before_it_exits(tmp_path: Path) -> None:
    """uvicorn ends a worker process by raising SIGTERM again once it has shut down, which
    kills it before atexit (stop_logging) runs: what the log thread still holds then must
    already be written, not lost with the process."""
    port = free_port()
    env = clean_env(DATA_DIR=str(tmp_path / "data"), WORKER_IN_PROCESS="false", LOG_JSON="true")
    server = start_serve(tmp_path, port, env, "--workers", "2")
    try:
        wait_until_ready(server, f"http://127.0.0.1:{port}", tmp_path / SERVE_STDERR)
        workers = listeners(psutil.Process(server.pid), port)
        assert len(workers) == 2, workers
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    text = (tmp_path / SERVE_STDERR).read_text(errors="replace")
    assert code == 0, text[-3000:]
    finished = {
        entry["msg"]
        for entry in json_lines(text)
        if entry["msg"].startswith("Finished server process")
    }
    assert finished == {f"Finished server process [{pid}]" for pid in workers}, text[-3000:]
