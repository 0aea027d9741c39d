"""(h') The app's own CPU per read, without HTTP: atelier's ASGI app against the bare handlers.

    python -m bench.app_cpu [--requests 6000] [--concurrency 32] [--log-level INFO]

bench/reads.py serves both over uvicorn and drives them with wrk, where the HTTP layer and
the load generator share the machine and each run moves by 10% or more. This one calls
each app as ASGI in this process, `--concurrency` requests at a time on uvloop, and prints
the process's CPU time per request: what the app itself costs (middlewares, routing,
dependencies, the handler, the database client, serialization, the access log), steady
enough to compare a change made to one piece. Same database, user and images as
bench/reads.py; the bare handlers are bench/bare_app.py's (`bare+db` runs atelier's own
statement). The access log goes to this process's stderr as `atelier serve` writes it:
send stderr to a pipe (`2> >(cat > /dev/null)`) to measure what a log collector's pipe
costs, or set `--log-level WARNING` to leave it out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import uvloop
from starlette.types import ASGIApp, Message

from bench.bare_app import QUERIES
from bench.bare_app import create_app as create_bare_app
from bench.common import bench_database, child_env, machine_line, users_with_tokens
from bench.reads import PAGE, PATHS, USER, seed_images


def _scope(path: str, token: str | None, state: dict[str, Any]) -> dict[str, Any]:
    route, _, query = path.partition("?")
    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": dict(state),  # what the lifespan yielded, per request as uvicorn does
    }


async def call(app: ASGIApp, path: str, token: str | None, state: dict[str, Any]) -> bytes:
    """One request; the body, after checking the answer was a 200."""
    statuses: list[int] = []
    body: list[bytes] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(_scope(path, token, state), receive, send)
    if statuses != [200]:
        raise RuntimeError(f"{path} answered {statuses}: {b''.join(body)[:300]!r}")
    return b"".join(body)


async def cpu_per_request(
    app: ASGIApp, path: str, token: str | None, state: dict[str, Any], args: argparse.Namespace
) -> float:
    """This process's CPU µs per request over `args.requests`, after a warm-up."""
    each: int = max(args.requests // args.concurrency, 1)
    clients: int = args.concurrency

    async def client(count: int) -> None:
        for _ in range(count):
            await call(app, path, token, state)

    await asyncio.gather(*(client(each // 10 + 1) for _ in range(clients)))
    began = time.process_time()
    await asyncio.gather(*(client(each) for _ in range(clients)))
    return (time.process_time() - began) / (each * clients) * 1e6


async def with_lifespan(app: Any, work: Any) -> Any:
    lifespan: AbstractAsyncContextManager[Any] = app.router.lifespan_context(app)
    async with lifespan as state:
        return await work(state or {})


def _measure_bare(
    bare: ASGIApp, name: str, results: dict[tuple[str, str], float], args: argparse.Namespace
) -> Any:
    async def measure(state: dict[str, Any]) -> None:
        for path in PATHS:
            if name == "bare+db" and path.partition("?")[0] not in QUERIES:
                continue  # no statement there: it would measure bare again
            results[path, name] = await cpu_per_request(bare, path, None, state, args)

    return measure


def run(args: argparse.Namespace) -> int:
    print(machine_line())
    print(f"{args.requests:,} requests per path and app, {args.concurrency} at a time, in process")
    with bench_database() as db:
        (token,) = asyncio.run(users_with_tokens(db, [USER]))
        asyncio.run(seed_images(db, args.images))
        # `atelier serve`'s defaults, as bench/reads.py starts it: none of this shell's
        # settings, no .env file.
        environment = child_env(db, LOG_JSON="true", LOG_LEVEL=args.log_level)
        os.environ.clear()
        os.environ.update(environment)
        from app.config import Settings
        from app.logs import configure_logging, stop_logging
        from app.main import create_app

        settings = Settings(_env_file=None)
        configure_logging(settings.log_level, settings.logs_as_json)
        atelier = create_app(settings)  # its lifespan freezes what startup made, as served
        results: dict[tuple[str, str], float] = {}
        bodies: dict[str, Any] = {}

        async def measure_atelier(state: dict[str, Any]) -> None:
            for path in PATHS:
                sent = None if path == "/healthz" else token
                body = await call(atelier, path, sent, state)
                bodies[path.partition("?")[0]] = json.loads(body)
                results[path, "atelier"] = await cpu_per_request(atelier, path, sent, state, args)

        uvloop.run(with_lifespan(atelier, measure_atelier))
        stop_logging()
        assert len(bodies["/v1/images"]["items"]) == PAGE, "seed more images"
        for name, url in (("bare", None), ("bare+db", db.url)):
            bare = create_bare_app(bodies, url, USER)

            uvloop.run(with_lifespan(bare, _measure_bare(bare, name, results, args)))
    print(f"\n{'path':<22} {'atelier':>10} {'bare':>10} {'bare+db':>10}   CPU µs per request")
    for path in PATHS:
        cells = [results.get((path, name)) for name in ("atelier", "bare", "bare+db")]
        print(f"{path:<22} " + " ".join(f"{c:>10.0f}" if c else f"{'':>10}" for c in cells))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.app_cpu", description=__doc__)
    parser.add_argument("--requests", type=int, default=6000, help="per path and app")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--images", type=int, default=40, help="the user's images (>= 31)")
    parser.add_argument("--log-level", default="INFO", help="INFO writes the access log")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
