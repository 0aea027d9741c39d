"""(h'') Two checkouts of atelier served side by side: the server's CPU per request, A/B.

    python -m bench.served_ab --old DIR [--new DIR] [--rounds 4] [--duration 5]

(h) compares atelier with a bare handler, one server after the other, and on a shared
machine its req/s move by tens of percent from run to run (the bare server's own `/v1/me`
went from 3,562 to 6,946 req/s in three runs on 2026-11-30). To see what one change is
worth served, this starts `atelier serve` from two checkouts (`--old`, e.g. a `git worktree`
of the commit before; `--new`, this one by default) on one database with the same user and
images as bench/reads.py, both on their defaults, and drives each path with wrk
(`-t2 -c32`) on one server and then the other, swapping the order every round, so both see
about the same machine. It prints, per path and checkout, the server's CPU µs per request
(all its threads: the steadier figure) and req/s of every round, with their medians.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    ATELIER,
    REPO,
    Child,
    bench_database,
    child_env,
    free_port,
    machine_line,
    users_with_tokens,
    wait_ready,
)
from bench.reads import PATHS, USER, Run, measure, seed_images


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("bench.served_ab needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    for tree in trees.values():
        if not (tree / "app" / "main.py").is_file():
            print(f"{tree}: not a checkout of atelier", file=sys.stderr)
            return 2
    print(machine_line())
    print(f"old: {trees['old']}\nnew: {trees['new']}")
    with bench_database() as db:
        (token,) = asyncio.run(users_with_tokens(db, [USER]))
        asyncio.run(seed_images(db, args.images))
        servers: dict[str, tuple[Child, str]] = {}
        try:
            for name, tree in trees.items():
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                # the checkout's own `app` package first on the path, as bench/reads.py runs
                # `atelier serve` on its defaults
                env = child_env(db, LOG_JSON="true", LOG_LEVEL="INFO", PYTHONPATH=str(tree))
                command = [str(ATELIER), "serve", "--port", str(port)]
                server = Child(command, env, db.workdir, f"serve-{name}")
                servers[name] = (server, base)
                wait_ready(server, base)
            runs: dict[tuple[str, str], list[Run]] = {}
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for path in PATHS:
                    sent = None if path == "/healthz" else token
                    for name in order:
                        server, base = servers[name]
                        done = measure("wrk", server, base + path, sent, args)
                        if done.bad:
                            raise RuntimeError(f"{name} {path}: {done.bad} bad answers")
                        runs.setdefault((path, name), []).append(done)
        finally:
            for server, _ in servers.values():
                server.stop()
    print(f"\n{args.rounds} rounds of {args.duration:g} s each, wrk -t2 -c32\n")
    print(f"{'path':<22} {'':<4} {'CPU µs/request, median':>24} {'req/s, median':>14}   rounds")
    for path in PATHS:
        for name in servers:
            rounds = runs[path, name]
            cpu = [round(r.cpu_us) for r in rounds]
            rps = [round(r.rps) for r in rounds]
            print(
                f"{path:<22} {name:<4} {statistics.median(cpu):>24.0f} "
                f"{statistics.median(rps):>14.0f}   CPU {cpu}, req/s {rps}"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.served_ab", description=__doc__)
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--new", type=Path, default=REPO, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk a run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--images", type=int, default=40, help="the user's images (>= 31)")
    args = parser.parse_args(argv)
    args.connections, args.threads = 32, 2  # as bench/reads.py's defaults
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
