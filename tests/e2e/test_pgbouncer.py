"""Many instances on one PostgreSQL behind PgBouncer in transaction mode, as on Supabase
(the pooler on port 6543): two `atelier serve` and two `atelier worker` processes, with
DATABASE_URL on PgBouncer (DB_STATEMENT_CACHE_SIZE=0) and DIRECT_URL on PostgreSQL itself
for migrations and LISTEN.

One submission sent to both instances with one Idempotency-Key makes one job; job and feed
events reach clients of either instance (NOTIFY from a worker, LISTEN on every instance's
direct connection: through a transaction-mode pooler, LISTEN would hear nothing); every job
runs once; `atelier check-ledger` agrees with the books. PgBouncer is the Debian package,
started here; without it this test skips (and fails under CI, see tests/support/services).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import asyncpg
import httpx

from app.config import Settings
from tests.fakes.running import worker_env
from tests.fakes.sse import SseParser
from tests.support.polling import DEADLINE_SECONDS, wait_until
from tests.support.serve import ATELIER, atelier_serve, free_port
from tests.support.services import require, tcp_open

JOBS = 6


def pgbouncer_binary() -> str | None:
    return shutil.which(
        "pgbouncer", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])
    )


@contextmanager
def pgbouncer(direct_url: str, workdir: Path) -> Iterator[str]:
    """PgBouncer in transaction mode in front of `direct_url`'s database; yields its URL."""
    binary = pgbouncer_binary()
    require(binary is not None, "pgbouncer is not installed (apt-get install pgbouncer)")
    assert binary is not None
    parts = urlsplit(direct_url)
    user = unquote(parts.username or "postgres")
    dbname = parts.path.lstrip("/")
    host, server_port, run_as = _server(direct_url)
    target = f"host={host} port={server_port} dbname={dbname} user={user}"
    if parts.password:
        target += f" password={unquote(parts.password)}"
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
{dbname} = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "users.txt"}
pool_mode = transaction
max_client_conn = 500
default_pool_size = 10
"""
    )
    # PgBouncer refuses to run as root unless told whom to become once it has read its files.
    as_user = ["-u", run_as] if os.geteuid() == 0 else []
    log = workdir / "pgbouncer.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, *as_user, str(ini)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not tcp_open("127.0.0.1", port):
            assert process.poll() is None, f"pgbouncer exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"pgbouncer did not listen:\n{log.read_text()}"
            time.sleep(0.05)
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{port}"
        yield urlunsplit(parts._replace(netloc=netloc, query=""))
    finally:
        process.terminate()
        process.wait(timeout=30)


def _server(url: str) -> tuple[str, int, str]:
    """(host, port) of the server `url` names, TCP or a Unix socket directory (the embedded
    server's `?host=/dir`), and the user PgBouncer should run as when started by root: the
    socket's owner (who may surely connect to it), else nobody."""
    parts = urlsplit(url)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    if not socket_dir.startswith("/"):
        return parts.hostname or "127.0.0.1", parts.port or 5432, "nobody"
    sockets = [p for p in Path(socket_dir).glob(".s.PGSQL.*") if p.suffix != ".lock"]
    assert sockets, f"no PostgreSQL socket in {socket_dir}"
    owner = pwd.getpwuid(sockets[0].stat().st_uid).pw_name
    return (
        socket_dir,
        int(sockets[0].name.rsplit(".", 1)[1]),
        owner if owner != "root" else "nobody",
    )


class Stream:
    """One open server-sent event stream, read in a task of its own."""

    def __init__(self, client: httpx.AsyncClient, path: str, token: str) -> None:
        self.events: list[tuple[str | None, str]] = []
        self.ready = asyncio.Event()
        self._task = asyncio.create_task(self._read(client, path, token))

    async def _read(self, client: httpx.AsyncClient, path: str, token: str) -> None:
        parser = SseParser()
        headers = {"Authorization": f"Bearer {token}"}
        async with client.stream("GET", path, headers=headers, timeout=None) as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    self.events.append((event.event, event.data))
                    self.ready.set()

    def named(self, name: str) -> list[str]:
        if self._task.done() and not self._task.cancelled() and self._task.exception():
            raise AssertionError("the stream failed") from self._task.exception()
        return [data for event, data in self.events if event == name]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_two_instances_and_two_workers_behind_pgbouncer_share_jobs_events_and_books(
    settings: Settings,
    db_url: str,
    db: asyncpg.Connection,
    dev_token: Callable[..., str],
    tmp_path: Path,
) -> None:
    with ExitStack() as stack:
        pooled = stack.enter_context(pgbouncer(db_url, tmp_path / "pgbouncer"))
        common = {
            "DATABASE_URL": pooled,
            "DIRECT_URL": db_url,
            "DB_STATEMENT_CACHE_SIZE": "0",
            "DATA_DIR": str(settings.data_dir),
            "ENV": "test",
            "AUTH": "dev",
            "LOG_JSON": "false",
            "DB_POOL_MIN_SIZE": "1",
            "DB_POOL_MAX_SIZE": "5",
        }
        instances = []
        for n in range(2):
            cwd = tmp_path / f"serve-{n}"
            cwd.mkdir()
            # Each instance runs the migrations on DIRECT_URL first (none are pending).
            host, port = stack.enter_context(
                atelier_serve(cwd, **common, WORKER_IN_PROCESS="false")
            )
            instances.append(f"http://{host}:{port}")
        for n in range(2):
            env = worker_env(
                settings,
                DATABASE_URL=pooled,
                DIRECT_URL=db_url,
                DB_STATEMENT_CACHE_SIZE="0",
                DB_POOL_MAX_SIZE="5",
                PROVIDER="local",
                LOCAL_PROVIDER_DELAY_MS="300",
                WORKER_CONCURRENCY="2",
                WORKER_POLL_SECONDS="0.5",
            )
            stack.callback(_stop, _start_worker(env, tmp_path / f"worker-{n}.log"))
        await _exercise(instances, dev_token, db, settings, pooled, db_url, tmp_path)


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [str(ATELIER), "worker"],
            env=env,
            cwd=log.parent,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


async def _exercise(
    instances: list[str],
    dev_token: Callable[..., str],
    db: asyncpg.Connection,
    settings: Settings,
    pooled: str,
    direct: str,
    tmp_path: Path,
) -> None:
    tokens = [dev_token(f"user_pgb_{n}") for n in range(2)]
    a, b = (httpx.AsyncClient(base_url=url, timeout=DEADLINE_SECONDS) for url in instances)
    async with a, b:
        # A feed client on each instance, subscribed before anything is made.
        feeds = [Stream(client, "/v1/feed/events", tokens[0]) for client in (a, b)]
        try:
            async with asyncio.timeout(DEADLINE_SECONDS):
                await asyncio.gather(*(feed.ready.wait() for feed in feeds))

            # Each submission goes to both instances at once, with one Idempotency-Key.
            async def submit(n: int) -> str:
                token = tokens[n % 2]
                headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"pgb-{n}"}
                body = {"prompt": f"a lighthouse, take {n}", "visibility": "public"}
                answers = await asyncio.gather(
                    a.post("/v1/generations", json=body, headers=headers),
                    b.post("/v1/generations", json=body, headers=headers),
                )
                assert {r.status_code for r in answers} <= {200, 201, 202}, [
                    r.text for r in answers
                ]
                ids = {r.json()["id"] for r in answers}
                assert len(ids) == 1, ids  # one job, whichever instance answered first
                job_id: str = ids.pop()
                return job_id

            job_ids = await asyncio.gather(*(submit(n) for n in range(JOBS)))

            # The first job's events, followed on the instance that did not answer first.
            followed = Stream(b, f"/v1/jobs/{job_ids[0]}/events", tokens[0])
            try:

                def completed() -> bool:
                    return any('"completed"' in data for data in followed.named("job"))

                await wait_until(completed, "job events reach a client of the other instance")
            finally:
                await followed.close()

            def announced() -> bool:
                return all(len(feed.named("image")) >= JOBS for feed in feeds)

            await wait_until(announced, "every new image reaches feed clients of both instances")
        finally:
            for feed in feeds:
                await feed.close()

    jobs = await db.fetch("SELECT id, status, attempts FROM image_generation_jobs")
    assert len(jobs) == JOBS
    assert {(r["status"], r["attempts"]) for r in jobs} == {("completed", 1)}
    images = await db.fetchval("SELECT count(*) FROM generated_images")
    assert images == JOBS  # each job ran once: one image each
    for feed in feeds:
        assert len(feed.named("image")) == JOBS, feed.named("image")
    charged = await db.fetchval(
        "SELECT count(*) FROM credit_ledger WHERE reason = 'generate' AND delta = -1"
    )
    assert charged == JOBS

    env = worker_env(settings, DATABASE_URL=pooled, DIRECT_URL=direct)
    process = await asyncio.create_subprocess_exec(
        str(ATELIER),
        "check-ledger",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), DEADLINE_SECONDS)
    assert process.returncode == 0, out.decode()
    assert "every balance matches its ledger" in out.decode()
