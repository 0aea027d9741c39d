"""`atelier serve` as a real process on a loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.config import Settings

ATELIER = Path(sys.executable).with_name("atelier")  # .venv/bin/atelier
STARTUP_DEADLINE = 90.0  # a guard against hanging (initdb + migrations), not a speed check
SERVE_STDERR = "serve.stderr"  # in the server's working directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**changes: str) -> dict[str, str]:
    """This environment without anything that configures Atelier (no DATABASE_URL, no
    PROVIDER, …), so the command runs on its defaults, plus `changes`."""
    ours = {name.upper() for name in Settings.model_fields} | {"TEST_DATABASE_URL"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    env.update(changes)
    return env


def start_serve(cwd: Path, port: int, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """Start `atelier serve --port port [args]` in `cwd` with exactly `env` (no .env of the
    checkout is read); its stderr goes to cwd/serve.stderr. Then `wait_until_ready`."""
    with (cwd / SERVE_STDERR).open("wb") as stderr:
        return subprocess.Popen(
            [str(ATELIER), "serve", "--port", str(port), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def on_test_database(db_url: str, data_dir: Path) -> dict[str, str]:
    """Settings for `atelier_serve` on a test's own (already migrated) database and data
    directory, with dev tokens, so the `dev_token` fixture's tokens are accepted."""
    return {
        "DATABASE_URL": db_url,
        "DATA_DIR": str(data_dir),
        "AUTH": "dev",
        "MIGRATE_ON_START": "false",
        "DB_POOL_MIN_SIZE": "1",
    }


@contextmanager
def atelier_serve(cwd: Path, **env: str) -> Iterator[tuple[str, int]]:
    """Run `atelier serve` in `cwd` with these settings; yield (host, port) once /readyz is
    200; stop it with SIGTERM (then SIGKILL) at the end."""
    port = free_port()
    server = start_serve(cwd, port, clean_env(**env))
    try:
        wait_until_ready(server, f"http://127.0.0.1:{port}", cwd / SERVE_STDERR)
        yield "127.0.0.1", port
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def wait_until_ready(server: subprocess.Popen[bytes], base_url: str, stderr: Path) -> None:
    """Until the server answers /readyz with 200; fail with its stderr if it exits first or
    is not ready by the deadline."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(
                f"atelier serve exited with {server.returncode} before it was ready:\n"
                + stderr.read_text(errors="replace")
            )
        try:
            answer = httpx.get(base_url + "/readyz", timeout=5)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(
        f"atelier serve was not ready within {STARTUP_DEADLINE:.0f}s (last: {last}):\n"
        + stderr.read_text(errors="replace")
    )


def dev_token(cwd: Path, env: dict[str, str], user_id: str, email: str) -> str:
    """A token from `atelier dev-token`, run as a developer would beside `atelier serve`
    (same directory and environment, so it signs with that server's dev key)."""
    minted = subprocess.run(
        [str(ATELIER), "dev-token", user_id, "--email", email],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip()
