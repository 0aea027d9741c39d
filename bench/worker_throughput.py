"""Jobs per second through ONE worker, and submit→completed latency (p50/p99).

For each provider, in a worker process of its own (as `atelier worker` runs, defaults
WORKER_CONCURRENCY=16, DB_POOL_MAX_SIZE=20):
- `instant`: answers at once with a small fixed PNG, so only the worker's own work is
  left (claim, progress writes, PNG check, storage put, image row, completion);
- `local`: PROVIDER=local with no delay, the offline dev renderer (Pillow, ~25 ms of CPU).

Two phases each:
1. backlog: N jobs queued in one transaction, then the worker starts; jobs/s is the steady
   completion rate (N-1 over first→last completed_at, so start-up is not counted);
2. paced: jobs submitted one by one at half that rate while the worker runs; latency is
   created_at → completed_at as the database recorded them.

    python -m bench.worker_throughput [--jobs 500] [--paced-seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/worker_throughput.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BenchDatabase,
    bench_database,
    connect,
    cpu_seconds,
    create_users,
    enqueue,
    loop_cpu_seconds,
    machine_line,
    percentile,
    postmaster_pid,
    print_table,
    server_facts,
    start_worker,
    tree_cpu_seconds,
)

DEADLINE = 300.0  # a guard against hanging, not a measurement


async def _wait_done(db: BenchDatabase, user_id: str, prompt: str, count: int) -> None:
    conn = await connect(db.url)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            done = await conn.fetchval(
                """
                SELECT count(*) FROM image_generation_jobs
                WHERE user_id = $1 AND prompt = $2 AND status IN ('completed', 'failed')
                """,
                user_id,
                prompt,
            )
            if done >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {count} jobs ended within {DEADLINE:.0f}s")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def _phase_numbers(db: BenchDatabase, user_id: str, prompt: str) -> dict[str, float]:
    conn = await connect(db.url)
    try:
        rows = await conn.fetch(
            """
            SELECT status, extract(epoch FROM completed_at - created_at)::float8 AS latency,
                   extract(epoch FROM completed_at)::float8 AS done_at
            FROM image_generation_jobs WHERE user_id = $1 AND prompt = $2
            """,
            user_id,
            prompt,
        )
    finally:
        await conn.close()
    completed = [r for r in rows if r["status"] == "completed"]
    latencies = [r["latency"] for r in completed]
    done_at = sorted(r["done_at"] for r in completed)
    span = done_at[-1] - done_at[0] if len(done_at) > 1 else float("nan")
    return {
        "jobs": float(len(rows)),
        "failed": float(len(rows) - len(completed)),
        "rate": (len(done_at) - 1) / span if span and span > 0 else float("nan"),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
    }


async def _backlog(db: BenchDatabase, user_id: str, jobs: int) -> None:
    conn = await connect(db.url)
    try:
        async with conn.transaction():  # all visible at once
            await enqueue(conn, user_id, jobs, prompt="backlog")
    finally:
        await conn.close()


async def _paced(db: BenchDatabase, user_id: str, rate: float, seconds: float) -> int:
    """Submit one job every 1/rate seconds (open loop: a slow worker does not slow this)."""
    count = max(1, int(rate * seconds))
    conn = await connect(db.url)
    try:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await enqueue(conn, user_id, 1, prompt="paced")
    finally:
        await conn.close()
    return count


def run_provider(
    db: BenchDatabase, provider: str, jobs: int, paced_seconds: float, profile: Path | None
) -> dict[str, str]:
    user_id = f"bench_{provider}"
    asyncio.run(_setup_user(db, user_id))
    asyncio.run(_backlog(db, user_id, jobs))
    started = time.perf_counter()
    postmaster = postmaster_pid(db)
    worker = start_worker(
        db,
        provider,
        profile=profile.with_suffix(f".{provider}{profile.suffix}") if profile else None,
        PROVIDER="local",
        LOCAL_PROVIDER_DELAY_MS="0",
    )
    try:
        # CPU from the worker's "ready" (imports and start-up done) to the last job: less
        # sensitive to other load on the machine than the rates.
        worker_cpu = cpu_seconds(worker.pid)
        loop_cpu = loop_cpu_seconds(worker.pid)
        pg_cpu = tree_cpu_seconds(postmaster) if postmaster else float("nan")
        asyncio.run(_wait_done(db, user_id, "backlog", jobs))
        worker_cpu = cpu_seconds(worker.pid) - worker_cpu
        loop_cpu = loop_cpu_seconds(worker.pid) - loop_cpu
        pg_cpu = (tree_cpu_seconds(postmaster) if postmaster else float("nan")) - pg_cpu
        drained = time.perf_counter() - started
        backlog = asyncio.run(_phase_numbers(db, user_id, "backlog"))
        rate = backlog["rate"] / 2
        submitted = asyncio.run(_paced(db, user_id, rate, paced_seconds))
        asyncio.run(_wait_done(db, user_id, "paced", submitted))
        paced = asyncio.run(_phase_numbers(db, user_id, "paced"))
        code = worker.stop()
        stats = worker.next_json(timeout=30) if code == 0 else {}
    finally:
        worker.kill()
    if code != 0:
        raise RuntimeError(f"the worker exited with {code}:\n{worker.stderr_text()[-4000:]}")
    problems = worker.problems()
    return {
        "jobs/s (backlog, steady)": f"{backlog['rate']:.1f}",
        f"backlog of {jobs} drained in (incl. start)": f"{drained:.2f} s",
        "CPU per job (backlog): worker / its loop thread / postgres": (
            f"{worker_cpu * 1000 / jobs:.2f} / {loop_cpu * 1000 / jobs:.2f} / "
            f"{pg_cpu * 1000 / jobs:.2f} ms"
        ),
        "paced rate (half of that)": f"{rate:.1f} jobs/s x {submitted} jobs",
        "submit→completed p50 (paced)": f"{paced['p50_ms']:.1f} ms",
        "submit→completed p99 (paced)": f"{paced['p99_ms']:.1f} ms",
        "submit→completed max (paced)": f"{paced['max_ms']:.1f} ms",
        "failed jobs": f"{int(backlog['failed'] + paced['failed'])}",
        "warnings the worker logged": f"{len(problems)}"
        + (f" (first: {problems[0]})" if problems else ""),
        "worker peak RSS": f"{stats.get('peak_rss_mib', float('nan')):.0f} MiB",
    }


async def _setup_user(db: BenchDatabase, user_id: str) -> None:
    conn = await connect(db.url)
    try:
        await create_users(conn, [user_id], 1_000_000_000)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_throughput")
    parser.add_argument("--jobs", type=int, default=500, help="backlog size per provider")
    parser.add_argument("--paced-seconds", type=float, default=8.0)
    parser.add_argument(
        "--providers", default="instant,local", help="comma-separated: instant, local"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the worker under cProfile, writing FILE with the provider's name added "
        "before the suffix (e.g. worker.instant.prof); CPU figures then include its overhead",
    )
    args = parser.parse_args(argv)
    with bench_database() as db:
        facts = asyncio.run(server_facts(db.url))
        print(machine_line())
        print(
            f"PostgreSQL {facts['server']} ({'embedded' if db.embedded else 'configured'}), "
            f"fsync={facts['fsync']}, synchronous_commit={facts['synchronous_commit']}; "
            "one worker process, WORKER_CONCURRENCY=16, DB_POOL_MAX_SIZE=20"
        )
        for provider in args.providers.split(","):
            numbers = run_provider(
                db, provider.strip(), args.jobs, args.paced_seconds, args.profile
            )
            print_table(f"worker throughput: provider={provider}", list(numbers.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
