"""1,000 jobs in flight at once against a provider that takes 5 s: the worker's peak RSS
and the worst event-loop stall.

One worker process (as `atelier worker` runs) with WORKER_CONCURRENCY=1000 and
LOCAL_PROVIDER_DELAY_MS=5000, started before the jobs exist; then 1,000 jobs are queued in
one transaction, so the worker claims them all together. Inside the worker a probe task
sleeps 10 ms in a loop and records how late it wakes: the worst lateness is the longest
time the event loop was busy and could not run anything else. The worst one is shown with
what the loop's thread did meanwhile: its own CPU, and how long it waited for a core (the
rest it was blocked, mostly on the GIL). RSS is the worker's VmHWM (the kernel's peak)
next to its RSS once started and idle.

Providers: `local` is PROVIDER=local (sleep 5 s, then the Pillow dev render, ~25 ms of CPU
each, in threads); `instant` sleeps 5 s and answers a small fixed PNG, leaving only the
worker's own work.

    python -m bench.inflight_memory [--jobs 1000] [--pool 20] [--providers local,instant]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/inflight_memory.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BenchDatabase,
    Child,
    bench_database,
    connect,
    create_users,
    enqueue,
    machine_line,
    print_table,
    rss_mib,
    server_facts,
    start_worker,
)

DELAY_MS = 5000
DEADLINE = 300.0  # a guard against hanging, not a measurement


async def _run_jobs(db: BenchDatabase, worker: Child, user_id: str, jobs: int) -> dict[str, float]:
    conn = await connect(db.url)
    try:
        await create_users(conn, [user_id], 1_000_000_000)
        async with conn.transaction():
            await enqueue(conn, user_id, jobs)
        started = time.perf_counter()
        deadline = time.monotonic() + DEADLINE
        most_running = 0
        first_done: float | None = None
        outside_peak = 0.0
        while True:
            row = await conn.fetchrow(
                """
                SELECT count(*) FILTER (WHERE status = 'running') AS running,
                       count(*) FILTER (WHERE status IN ('completed', 'failed')) AS ended,
                       count(*) FILTER (WHERE status = 'failed') AS failed
                FROM image_generation_jobs WHERE user_id = $1
                """,
                user_id,
            )
            assert row is not None
            most_running = max(most_running, row["running"])
            outside_peak = max(outside_peak, rss_mib(worker.pid)[0])
            if row["ended"] and first_done is None:
                first_done = time.perf_counter() - started
            if row["ended"] >= jobs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {row['ended']} of {jobs} jobs ended in {DEADLINE:.0f}s")
            await asyncio.sleep(0.1)
        return {
            "all_done_s": time.perf_counter() - started,
            "first_done_s": first_done or float("nan"),
            "most_running": float(most_running),
            "failed": float(row["failed"]),
            "sampled_peak_rss_mib": outside_peak,
        }
    finally:
        await conn.close()


def run_provider(db: BenchDatabase, provider: str, jobs: int, pool: int) -> dict[str, str]:
    worker = start_worker(
        db,
        provider,
        probe=True,
        PROVIDER="local",
        LOCAL_PROVIDER_DELAY_MS=str(DELAY_MS),
        WORKER_CONCURRENCY=str(jobs),
        DB_POOL_MAX_SIZE=str(pool),
    )
    try:
        numbers = asyncio.run(_run_jobs(db, worker, f"bench_inflight_{provider}", jobs))
        code = worker.stop()
        stats = worker.next_json(timeout=30) if code == 0 else {}
    finally:
        worker.kill()
    if code != 0:
        raise RuntimeError(f"the worker exited with {code}:\n{worker.stderr_text()[-4000:]}")
    problems = worker.problems()
    extra = stats["peak_rss_mib"] - stats["baseline_rss_mib"]
    return {
        "jobs in flight at once (most seen running)": f"{int(numbers['most_running'])}",
        "queued → all done": f"{numbers['all_done_s']:.1f} s",
        "queued → first done": f"{numbers['first_done_s']:.1f} s",
        "failed jobs": f"{int(numbers['failed'])}",
        "warnings the worker logged": f"{len(problems)}"
        + (f" (first: {problems[0]})" if problems else ""),
        "worker RSS when idle": f"{stats['baseline_rss_mib']:.0f} MiB",
        "worker peak RSS (VmHWM)": f"{stats['peak_rss_mib']:.0f} MiB",
        "peak above idle, per job": f"{extra * 1024 / jobs:.0f} KiB",
        "worst event-loop stall": f"{stats['stall_worst_ms']:.1f} ms",
        "  of which: loop CPU / waiting for a core": (
            f"{stats['stall_worst_cpu_ms']:.1f} / {stats['stall_worst_queued_ms']:.1f} ms"
        ),
        "most loop CPU in one sleep / most blocked (GIL)": (
            f"{stats['loop_cpu_worst_ms']:.1f} / {stats['blocked_worst_ms']:.1f} ms"
        ),
        "event-loop stall p99 / p50": (
            f"{stats['stall_p99_ms']:.1f} / {stats['stall_p50_ms']:.2f} ms "
            f"({int(stats['stall_samples'])} samples of a 10 ms sleep)"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inflight_memory")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=20, help="DB_POOL_MAX_SIZE of the worker")
    parser.add_argument("--providers", default="local,instant", help="comma-separated")
    args = parser.parse_args(argv)
    with bench_database() as db:
        facts = asyncio.run(server_facts(db.url))
        print(machine_line())
        print(
            f"PostgreSQL {facts['server']} ({'embedded' if db.embedded else 'configured'}); "
            f"one worker process, WORKER_CONCURRENCY={args.jobs}, "
            f"DB_POOL_MAX_SIZE={args.pool}, provider delay {DELAY_MS} ms"
        )
        for provider in args.providers.split(","):
            numbers = run_provider(db, provider.strip(), args.jobs, args.pool)
            print_table(
                f"{args.jobs} jobs in flight: provider={provider} (5 s each)",
                list(numbers.items()),
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
