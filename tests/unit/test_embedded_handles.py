"""A process killed while using the embedded database must not keep it running forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app.db.pool import _forget_dead_users


def test_processes_that_died_are_dropped_from_the_embedded_servers_users(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid no longer exists
    pgdata = tmp_path / "pg"
    pgdata.mkdir()
    handles = pgdata / ".handle_pids.json"
    handles.write_text(json.dumps([dead.pid, os.getpid()]))

    _forget_dead_users(pgdata)

    assert json.loads(handles.read_text()) == [os.getpid()]


def test_a_data_dir_without_a_server_yet_is_left_alone(tmp_path: Path) -> None:
    _forget_dead_users(tmp_path / "pg")
    assert not (tmp_path / "pg").exists()
