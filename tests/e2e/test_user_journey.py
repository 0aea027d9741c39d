"""A user's whole journey through `atelier serve`, run as the real command on its defaults.

No DATABASE_URL: the server starts its embedded PostgreSQL in ./.data of a fresh working
directory, migrates it, and serves on a real port. The test talks to it only over HTTP and
the CLI, as a user and a developer would: mint a dev token, upload a reference, ask for an
edit, follow the job's server-sent events to the end, download the image from the URL the
job gives, check the balance, then stop the server with SIGTERM as a process manager does.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
from PIL import Image

from tests.support.serve import (
    ATELIER,
    SERVE_STDERR,
    clean_env,
    dev_token,
    free_port,
    start_serve,
    wait_until_ready,
)


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """PostgreSQL server processes whose command line names `pgdata`."""
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in cmdline:
            found.append(proc)
    return found


def stop_leftover_postgres(pgdata: Path) -> None:
    """If the server left its embedded PostgreSQL running, stop that one postmaster (by the
    pid in its postmaster.pid) so a failing run does not leak a database server."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        postmaster = psutil.Process(pid)
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return
    if str(pgdata) not in (postmaster.cmdline() or []):
        return  # a reused pid: not ours
    postmaster.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
    try:
        postmaster.wait(15)
    except psutil.TimeoutExpired:
        postmaster.kill()


def sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Parse a text/event-stream body into events ({"event", "data", "id"} as sent)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                yield fields
            fields = {}
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value


def reference_png() -> bytes:
    image = Image.new("RGB", (64, 48), (30, 120, 200))
    image.paste((250, 200, 40), (16, 12, 48, 36))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_user_uploads_edits_follows_progress_and_downloads_the_image_from_atelier_serve(
    tmp_path: Path,
) -> None:
    assert ATELIER.exists(), ATELIER
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    pgdata = (tmp_path / ".data" / "pg").resolve()
    env = clean_env(
        # no PUBLIC_BASE_URL: the signed links must point at the port serve was given
        LOG_JSON="false",
        LOCAL_PROVIDER_DELAY_MS="3000",  # slow enough that progress shows between the steps
    )
    stderr_path = tmp_path / SERVE_STDERR
    server = start_serve(tmp_path, port, env)  # the database goes in ./.data
    try:
        wait_until_ready(server, base_url, stderr_path)
        assert (pgdata / "PG_VERSION").exists(), "the embedded database is not in ./.data"

        token = dev_token(tmp_path, env, "user_e2e", "e2e@example.test")
        headers = {"Authorization": f"Bearer {token}"}

        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as api:
            uploaded = api.post(
                "/v1/uploads", files={"file": ("sketch.png", reference_png(), "image/png")}
            )
            assert uploaded.status_code == 201, uploaded.text
            upload_key = uploaded.json()["upload_key"]

            created = api.post(
                "/v1/generations",
                json={
                    "prompt": "make it night time",
                    "kind": "edit",
                    "reference": {"upload_key": upload_key},
                },
            )
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            assert created.headers["location"] == f"/v1/jobs/{job_id}"

            seen: list[dict[str, Any]] = []
            with api.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                for event in sse_events(stream):
                    assert event.get("event") == "job", event
                    seen.append(json.loads(event["data"]))
                    if seen[-1]["status"] in ("completed", "failed"):
                        break
            final = seen[-1]
            assert final["status"] == "completed", seen
            progress = [job["progress"] for job in seen]
            assert progress[-1] == 100, progress
            assert all(a < b for a, b in zip(progress, progress[1:], strict=False)), progress
            assert len(progress) >= 2, progress  # a step before the end was streamed too
            assert final["id"] == job_id and final["kind"] == "edit"

            image_url = final["image"]["url"]
            assert image_url.startswith(base_url + "/"), image_url
        # The signed URL is all it takes: fetched without the bearer token.
        fetched = httpx.get(image_url, timeout=30)
        assert fetched.status_code == 200, fetched.text
        assert fetched.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(fetched.content)) as picture:
            picture.load()
            assert picture.format == "PNG"
            assert picture.size == (final["image"]["width"], final["image"]["height"])

        me = httpx.get(base_url + "/v1/me", headers=headers, timeout=30)
        assert me.status_code == 200, me.text
        assert me.json()["credits"] == 4  # 5 on sign-up, 1 for the edit

        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError("atelier serve did not stop on SIGTERM") from exc
        assert code == 0, f"exit status {code}:\n" + stderr_path.read_text(errors="replace")
        # Its embedded PostgreSQL stopped with it.
        assert not (pgdata / "postmaster.pid").exists()
        assert postgres_processes(pgdata) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
        stop_leftover_postgres(pgdata)
