"""1,000 feed clients connecting and leaving, in waves: the server's resident memory after
each wave, and how long one like takes to reach all of them.

`atelier serve` runs in a process of its own (WORKER_IN_PROCESS=false). Each wave opens
1,000 `GET /v1/feed/events` streams on plain sockets (100 at a time, 50 users), waits for
every `ready`, likes and unlikes one public image through the API (5 changes, one after
another) and times, for every client and change, how long after the change was answered its
`likes` event arrived, and how much CPU the server process spent from just before each change
until its last arrival, per delivered event (the change's own request included: about a
millisecond in all; the kernel counts CPU in 10 ms ticks, hence several changes); then
closes them all and waits until
the server holds none of their sockets. The server's RSS is read from /proc after each
wave with the clients open and again after they left. Flat memory means the "after" column
stops growing once the first waves have warmed the allocator.

    python -m bench.feed_clients [--clients 1000] [--waves 5] [--events 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/feed_clients.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    ATELIER,
    BenchDatabase,
    Child,
    bench_database,
    child_env,
    connect,
    free_port,
    machine_line,
    percentile,
    rss_mib,
    server_facts,
    users_with_tokens,
    wait_ready,
)
from tests.fakes.sse import RawSseClient  # noqa: E402

USERS = 50
BATCH = 100
DEADLINE = 120.0  # a guard against hanging, not a measurement


def client_sockets(server_pid: int, port: int) -> int:
    return sum(
        1
        for c in psutil.Process(server_pid).net_connections(kind="tcp")
        if c.status != psutil.CONN_LISTEN and c.laddr.port == port
    )


def _cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (user + system)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _until_closed(server_pid: int, port: int) -> None:
    """Until the server holds no client socket but `api`'s keep-alive one."""
    for _ in range(int(DEADLINE / 0.05)):
        if client_sockets(server_pid, port) <= 1:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the server kept client sockets open")


async def _public_image(db: BenchDatabase, owner: str) -> uuid.UUID:
    conn = await connect(db.url)
    try:
        image_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO generated_images (id, user_id, image_url, visibility) "
            "VALUES ($1, $2, 'https://bench.invalid/image.png', 'public')",
            image_id,
            owner,
        )
        return image_id
    finally:
        await conn.close()


async def _waves(
    server: Child,
    port: int,
    tokens: list[str],
    image: uuid.UUID,
    clients: int,
    waves: int,
    events: int,
) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    liker = tokens[0]
    changes = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
        for wave in range(1, waves + 1):
            async with asyncio.timeout(DEADLINE):
                started = time.perf_counter()
                open_clients: list[RawSseClient] = []
                for first in range(0, clients, BATCH):
                    open_clients += await asyncio.gather(
                        *(
                            RawSseClient.open(port, tokens[n % len(tokens)])
                            for n in range(first, min(first + BATCH, clients))
                        )
                    )
                connected = time.perf_counter() - started
                rss_open, _ = rss_mib(server.pid)

                # Like and unlike in turn, so every change sends one `likes` event; each
                # reaches every client before the next is sent.
                delays: list[float] = []
                cpu = 0.0
                for _ in range(events):
                    method = api.put if changes % 2 == 0 else api.delete
                    changes += 1
                    cpu_before = _cpu_seconds(server.pid)
                    response = await method(
                        f"/v1/images/{image}/like", headers={"Authorization": f"Bearer {liker}"}
                    )
                    answered = time.perf_counter()
                    response.raise_for_status()
                    arrivals = await asyncio.gather(
                        *(c.read_until(b"event: likes") for c in open_clients)
                    )
                    cpu += _cpu_seconds(server.pid) - cpu_before
                    delays += [max(0.0, a - answered) * 1000 for a in arrivals]

                await asyncio.gather(*(c.close() for c in open_clients))
                del open_clients
                await _until_closed(server.pid, port)
                await asyncio.sleep(0.5)  # let the server finish whatever follows a close
                rss_after, peak = rss_mib(server.pid)
            rows.append(
                {
                    "wave": str(wave),
                    "connect all": f"{connected:.2f} s",
                    "RSS open": f"{rss_open:.0f} MiB",
                    "like → client min": f"{min(delays):.1f} ms",
                    "p50": f"{percentile(delays, 0.5):.1f} ms",
                    "p99": f"{percentile(delays, 0.99):.1f} ms",
                    "max": f"{max(delays):.1f} ms",
                    "CPU/delivery": f"{cpu / len(delays) * 1e6:.0f} µs",
                    "RSS after": f"{rss_after:.0f} MiB",
                    "peak": f"{peak:.0f} MiB",
                }
            )
    return rows


def run(
    db: BenchDatabase, clients: int, waves: int, events: int
) -> tuple[float, list[dict[str, str]]]:
    tokens = asyncio.run(users_with_tokens(db, [f"feed_bench_{n:02d}" for n in range(USERS)]))
    image = asyncio.run(_public_image(db, "feed_bench_00"))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = child_env(db, WORKER_IN_PROCESS="false", PUBLIC_BASE_URL=base_url)
    server = Child([str(ATELIER), "serve", "--port", str(port)], env, db.workdir, "serve")
    try:
        wait_ready(server, base_url)
        idle, _ = rss_mib(server.pid)
        return idle, asyncio.run(_waves(server, port, tokens, image, clients, waves, events))
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed_clients")
    parser.add_argument("--clients", type=int, default=1000, help="open streams per wave")
    parser.add_argument("--waves", type=int, default=5)
    parser.add_argument(
        "--events", type=int, default=5, help="likes sent one after another in each wave"
    )
    args = parser.parse_args(argv)
    with bench_database() as db:
        facts = asyncio.run(server_facts(db.url))
        print(machine_line())
        print(
            f"PostgreSQL {facts['server']} ({'embedded' if db.embedded else 'configured'}); "
            f"one `atelier serve`, {args.clients} feed clients per wave, {args.waves} waves, "
            f"{args.events} likes each"
        )
        idle, rows = run(db, args.clients, args.waves, args.events)
    print(f"\nserver RSS once ready, before any client: {idle:.0f} MiB\n")
    headers = list(rows[0])
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in headers]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(row[h].rjust(w) for h, w in zip(headers, widths, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
