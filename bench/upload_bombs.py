"""12 image uploads at once: the server's resident memory and how long other requests wait.

`atelier serve` runs in a process of its own (WORKER_IN_PROCESS=false). Each phase fires
`--uploads` uploads together through `POST /v1/uploads` while a probe calls `GET /healthz`
and `GET /v1/me` one after the other, and a thread samples the server's RSS from /proc every
10 ms. Phases:

- `bomb`: a 154 KB transparent 6300x6300 RGBA PNG (~150 MB once decoded). It used to pass
  the pixel limit; now MAX_UPLOAD_SIDE refuses it from the header (422).
- `largest`: the largest image accepted, 4096x4096 RGBA (noise, ~1.8 MB), decoded and
  re-encoded on the imaging pool (IMAGING_WORKERS threads).

`--unbounded` starts the server as it was before the fix (MAX_UPLOAD_SIDE and
MAX_UPLOAD_PIXELS out of the way, one decoder per upload) for comparison.

    python -m bench.upload_bombs [--uploads 12] [--rounds 2] [--unbounded]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/upload_bombs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import (  # noqa: E402
    ATELIER,
    BenchDatabase,
    Child,
    bench_database,
    child_env,
    free_port,
    machine_line,
    percentile,
    rss_mib,
    server_facts,
    users_with_tokens,
    wait_ready,
)

DEADLINE = 300.0  # a guard against hanging, not a measurement


def bomb_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (6300, 6300)).save(out, "PNG")
    return out.getvalue()


def largest_png() -> bytes:
    noise = Image.frombytes("RGBA", (512, 512), os.urandom(512 * 512 * 4))
    out = io.BytesIO()
    noise.resize((4096, 4096), Image.Resampling.NEAREST).save(out, "PNG", compress_level=1)
    return out.getvalue()


class RssSampler:
    """The highest RSS of a process seen while running (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            current, _ = rss_mib(self.pid)
            self.peak = max(self.peak, current)
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def _probe(
    client: httpx.AsyncClient, token: str, done: asyncio.Event
) -> dict[str, list[float]]:
    """Call /healthz and /v1/me in turn until `done`; their latencies in ms."""
    found: dict[str, list[float]] = {"/healthz": [], "/v1/me": []}
    headers = {"Authorization": f"Bearer {token}"}
    while not done.is_set():
        for path in found:
            started = time.perf_counter()
            response = await client.get(path, headers=headers, timeout=DEADLINE)
            response.raise_for_status()
            found[path].append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)
    return found


async def _phase(
    server: Child, base_url: str, token: str, data: bytes, uploads: int
) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=uploads + 4)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=DEADLINE) as client:
        await client.get("/v1/me", headers=headers)
        before, _ = rss_mib(server.pid)
        done = asyncio.Event()
        with RssSampler(server.pid) as sampler:
            probe = asyncio.create_task(_probe(client, token, done))
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/v1/uploads",
                        files={"file": ("x.png", data, "image/png")},
                        headers=headers,
                    )
                    for _ in range(uploads)
                )
            )
            burst = time.perf_counter() - started
            done.set()
            latencies = await probe
        await asyncio.sleep(2)
        after, _ = rss_mib(server.pid)
    statuses = sorted({r.status_code for r in answers})
    row: dict[str, object] = {
        "statuses": statuses,
        "burst_s": burst,
        "rss_before": before,
        "rss_peak": sampler.peak,
        "rss_after_2s": after,
    }
    for path, values in latencies.items():
        row[path] = (len(values), percentile(values, 0.5), max(values) if values else 0.0)
    return row


def run(
    db: BenchDatabase, uploads: int, rounds: int, unbounded: bool
) -> list[tuple[str, dict[str, Any]]]:
    [token] = asyncio.run(users_with_tokens(db, ["upload_bench"]))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    changes = {"WORKER_IN_PROCESS": "false", "PUBLIC_BASE_URL": base_url}
    if unbounded:
        changes.update(
            MAX_UPLOAD_SIDE="100000", MAX_UPLOAD_PIXELS="64000000", IMAGING_WORKERS=str(uploads)
        )
    server = Child(
        [str(ATELIER), "serve", "--port", str(port)], child_env(db, **changes), db.workdir, "serve"
    )
    results = []
    try:
        wait_ready(server, base_url)
        idle, _ = rss_mib(server.pid)
        print(f"server RSS once ready: {idle:.0f} MiB")
        for name, data in (("bomb", bomb_png()), ("largest", largest_png())):
            for n in range(rounds):
                row = asyncio.run(_phase(server, base_url, token, data, uploads))
                results.append((f"{name} #{n + 1} ({len(data) // 1024} KiB)", row))
        _, hwm = rss_mib(server.pid)
        print(f"server peak RSS over the whole run (VmHWM): {hwm:.0f} MiB")
    finally:
        server.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upload_bombs")
    parser.add_argument("--uploads", type=int, default=12, help="uploads fired at once")
    parser.add_argument("--rounds", type=int, default=2, help="bursts per image")
    parser.add_argument(
        "--unbounded", action="store_true", help="the limits and pool as they were before"
    )
    args = parser.parse_args(argv)
    with bench_database() as db:
        facts = asyncio.run(server_facts(db.url))
        print(machine_line())
        print(
            f"PostgreSQL {facts['server']} ({'embedded' if db.embedded else 'configured'}); "
            f"one `atelier serve`, {args.uploads} uploads at once"
            + (" (unbounded: as before the fix)" if args.unbounded else "")
        )
        results = run(db, args.uploads, args.rounds, args.unbounded)
    print()
    print(
        f"{'burst':<24} {'status':>8} {'wall':>7} {'RSS before':>10} {'peak':>6} {'after 2s':>8}"
        f"  {'/healthz n, p50, max (ms)':>26}  {'/v1/me n, p50, max (ms)':>24}"
    )
    for name, row in results:
        health, me = row["/healthz"], row["/v1/me"]
        print(
            f"{name:<24} {','.join(map(str, row['statuses'])):>8} {row['burst_s']:>6.2f}s"
            f" {row['rss_before']:>9.0f}M {row['rss_peak']:>5.0f}M {row['rss_after_2s']:>7.0f}M"
            f"  {health[0]:>6} {health[1]:>8.1f} {health[2]:>8.1f}"
            f"  {me[0]:>6} {me[1]:>8.1f} {me[2]:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
