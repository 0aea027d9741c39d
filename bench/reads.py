"""(g) Reads: `atelier serve` against bare FastAPI handlers returning the same JSON.

    python -m bench.reads [--duration 10] [--connections 32] [--threads 2]

`atelier serve` runs on its defaults (JSON access log at INFO, the in-process worker, the
head-limited httptools protocol, uvloop) on a fresh database with one user who has
`--images` images (local storage, so every item carries a signed URL). The bare server
(bench/bare_app.py) is FastAPI with one handler per path returning what `atelier serve`
answered there, under the same uvicorn with the same options, and uvicorn's access log on
(one line per request to stderr, as `atelier serve` writes one); `--bare-quiet` adds a
second bare server without it. A third, `bare+db`, is the bare server that also runs the one
statement atelier runs on `/v1/me` and `/v1/images` (from `app.db`) before it answers: the
floor of a handler that reads the database once, which shows how much of the gap to `bare`
is the database round trip itself (the goals are against `bare`). For each path, each
server gets a warm-up and then `--duration` seconds of wrk (or hey when wrk is missing) with
the same connections, one server after the other, so all see about the same machine. It
prints requests/s, p50 and p99 latency, the server's CPU (in all, and per request: on a
busy machine the steadier figure), and each ratio atelier / bare against the goals of
issue 9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.bare_app import QUERIES
from bench.common import (
    ATELIER,
    BenchDatabase,
    Child,
    bench_database,
    child_env,
    connect,
    cpu_seconds,
    free_port,
    machine_line,
    server_facts,
    users_with_tokens,
    wait_ready,
)

USER = "user_bench_reader"
PAGE = 30
# path → the goal of issue 9 for atelier / bare
PATHS = {
    "/healthz": 0.8,
    "/v1/me": 0.5,
    f"/v1/images?limit={PAGE}": 0.3,
}
ME_P99_GOAL_MS = 50.0


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # answers that were not 2xx (or errors)
    cpu_pct: float  # of one core, the server process

    @property
    def cpu_us(self) -> float:
        """The server's CPU time per request: less skewed by other work than req/s."""
        return self.cpu_pct / 100 / max(self.rps, 1e-9) * 1e6


async def seed_images(db: BenchDatabase, count: int) -> None:
    conn = await connect(db.url)
    try:
        await conn.executemany(
            """
            INSERT INTO generated_images (id, user_id, image_url, prompt, storage_key, model,
                                          visibility, width, height, created_at)
            VALUES ($1, $2, '', $3, $4, 'local', $5, 1024, 1024,
                    now() - make_interval(secs => $6))
            """,
            [
                (
                    image_id,
                    USER,
                    f"a small watercolour fox, number {i}",
                    f"images/{USER}/{image_id}.png",
                    "public" if i % 3 == 0 else "private",
                    float(i),
                )
                for i in range(count)
                for image_id in [uuid.uuid4()]
            ],
        )
    finally:
        await conn.close()


# -- the load generator -----------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


_SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"


def parse_wrk(out: str) -> tuple[float, float, float, int, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    bad = 0
    if found := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        bad += int(found[1])
    if found := re.search(_SOCKET_ERRORS, out):
        bad += sum(int(n) for n in found.groups())
    return rps, p50, p99, requests, bad


def parse_hey(out: str) -> tuple[float, float, float, int, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out)[1]) * 1000  # type: ignore[index]
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out)[1]) * 1000  # type: ignore[index]
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    bad = sum(n for c, n in codes.items() if not 200 <= c < 300)
    bad += len(re.findall(r"^\s+\[\d+\]\s+Get ", out, re.M))  # error lines
    return rps, p50, p99, sum(codes.values()), bad


def load(
    tool: str, url: str, token: str | None, seconds: float, connections: int, threads: int
) -> tuple[float, float, float, int, int]:
    header = ["-H", f"Authorization: Bearer {token}"] if token else []
    if tool == "wrk":
        args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
        args += [*header, url]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        return parse_wrk(out)
    args = ["hey", "-z", f"{seconds:g}s", "-c", str(connections), *header, url]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return parse_hey(out)


def measure(
    tool: str,
    server: Child,
    url: str,
    token: str | None,
    args: argparse.Namespace,
) -> Run:
    load(tool, url, token, args.warmup, args.connections, args.threads)
    cpu_before, began = cpu_seconds(server.pid), time.perf_counter()
    rps, p50, p99, requests, bad = load(
        tool, url, token, args.duration, args.connections, args.threads
    )
    cpu = 100 * (cpu_seconds(server.pid) - cpu_before) / (time.perf_counter() - began)
    return Run(rps, p50, p99, requests, bad, cpu)


# -- the run ----------------------------------------------------------------------------------


def start_bare(db: BenchDatabase, bodies: Path, port: int, name: str) -> Child:
    args = [sys.executable, "-m", "bench.bare_app", "--port", str(port), "--bodies", str(bodies)]
    args.append("--no-access-log" if name == "bare-quiet" else "--access-log")
    if name == "bare+db":
        args += ["--database-url", db.url, "--user", USER]
    return Child(args, child_env(db), db.workdir, name)


def wait_bare(server: Child, base_url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            if httpx.get(base_url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the bare server did not start:\n" + server.stderr_text()[-4000:])


def run(args: argparse.Namespace) -> int:
    tool = "wrk" if shutil.which("wrk") and not args.hey else "hey"
    if shutil.which(tool) is None:
        print("bench.reads needs wrk (apt-get install wrk) or hey on PATH", file=sys.stderr)
        return 2
    print(machine_line())
    print(
        f"load: {tool}, {args.connections} connections"
        + (f", {args.threads} threads" if tool == "wrk" else "")
        + f", {args.warmup:g} s warm-up + {args.duration:g} s per path and server"
    )
    with bench_database() as db:
        facts = asyncio.run(server_facts(db.url))
        print("database: " + ", ".join(f"{k}={v}" for k, v in facts.items()))
        (token,) = asyncio.run(users_with_tokens(db, [USER]))
        asyncio.run(seed_images(db, args.images))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        # `atelier serve` on its defaults: JSON logs at INFO (the access log), the worker in
        # process; only where the database and the data are come from the bench.
        env = child_env(db, LOG_JSON="true", LOG_LEVEL="INFO")
        serve_args = [str(ATELIER), "serve", "--port", str(port)]
        if args.profile:
            serve_args = [sys.executable, "-m", "cProfile", "-o", str(args.profile)]
            serve_args += ["-m", "app.cli", "serve", "--port", str(port)]
        servers: dict[str, tuple[Child, str]] = {}
        try:
            atelier = Child(serve_args, env, db.workdir, "serve")
            servers["atelier"] = (atelier, base)
            wait_ready(atelier, base)
            bodies = {}
            for path in PATHS:
                answer = httpx.get(
                    base + path, headers={"Authorization": f"Bearer {token}"}, timeout=10
                )
                answer.raise_for_status()
                bodies[path.partition("?")[0]] = answer.json()
            assert len(bodies["/v1/images"]["items"]) == PAGE, "seed more images"
            bodies_path = db.workdir / "bodies.json"
            bodies_path.write_text(json.dumps(bodies))
            variants = ["bare", "bare+db"] + (["bare-quiet"] if args.bare_quiet else [])
            for name in variants:
                bare_port = free_port()
                bare = start_bare(db, bodies_path, bare_port, name)
                servers[name] = (bare, f"http://127.0.0.1:{bare_port}")
                wait_bare(bare, servers[name][1])
            results: dict[tuple[str, str], Run] = {}
            for path in PATHS:
                for name, (child, url) in servers.items():
                    if name == "bare+db" and path.partition("?")[0] not in QUERIES:
                        continue  # no statement there: it would measure bare again
                    token_sent = token if name == "atelier" and path != "/healthz" else None
                    results[path, name] = measure(tool, child, url + path, token_sent, args)
            log_lines, other = access_log_summary(atelier.stderr_text())
        finally:
            for child, _ in servers.values():
                child.stop()
        if args.profile:
            print(f"\nprofile of atelier serve written to {args.profile}")
    print_results(results, list(servers), log_lines)
    for line in other:
        print("atelier serve logged: " + line)
    return 1 if any(r.bad for r in results.values()) else 0


def access_log_summary(stderr: str) -> tuple[int, list[str]]:
    """How many access log lines atelier wrote, and its other lines (non-200 answers,
    warnings, errors), at most 20 of them."""
    count, other = 0, []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if record.get("logger") == "atelier.access":
            count += 1
            if record.get("status") == 200:
                continue
        if record.get("level") in ("warning", "error", "critical") or "status" in record:
            other.append(line[:300])
    return count, other[:20]


def print_results(results: dict[tuple[str, str], Run], names: list[str], log_lines: int) -> None:
    print()
    header = f"{'path':<22} {'server':<11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    print(header + f" {'server CPU':>10} {'CPU/req':>9} {'non-2xx':>8}")
    for path in PATHS:
        for name in names:
            if (path, name) not in results:
                continue
            r = results[path, name]
            print(
                f"{path:<22} {name:<11} {r.rps:>8,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
                f" {r.cpu_pct:>9.0f}% {r.cpu_us:>6.0f} µs {r.bad:>8}"
            )
    print()
    for path, goal in PATHS.items():
        atelier = results[path, "atelier"].rps
        ratios = ", ".join(
            f"/ {name} {atelier / results[path, name].rps:.2f}"
            for name in names[1:]
            if (path, name) in results
        )
        print(f"ratio {path:<22} atelier {ratios}  (goal >= {goal})")
    p99 = results["/v1/me", "atelier"].p99_ms
    print(f"p99 of /v1/me on atelier: {p99:.1f} ms (goal < {ME_P99_GOAL_MS:.0f} ms)")
    print(f"access log lines written by atelier serve: {log_lines:,}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reads", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each one")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--images", type=int, default=40, help="the user's images (>= 31)")
    parser.add_argument("--hey", action="store_true", help="use hey even if wrk is there")
    parser.add_argument(
        "--bare-quiet", action="store_true", help="also a bare server without access log"
    )
    parser.add_argument("--profile", type=Path, help="run atelier serve under cProfile")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
