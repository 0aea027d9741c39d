"""The floor the reads bench compares `atelier serve` with: bare FastAPI handlers that return
the same JSON, served by the same uvicorn with the same options as `atelier serve`.

    python -m bench.bare_app --port P --bodies FILE [--access-log | --no-access-log]
                             [--database-url URL --user ID]

FILE holds {"/healthz": ..., "/v1/me": ..., "/v1/images": ...}: what `atelier serve`
answered on each path. Each handler returns its JSON as a dict (FastAPI encodes it): no
middleware, no authentication, no database.

With `--database-url` (`bare+db` in bench.reads), `/v1/me` and `/v1/images` also run the one
statement atelier runs there (taken from `app.db` at run time, for `--user`) on an asyncpg
pool of the same size before they answer: the floor of any handler that reads the database
once per request, so the ratios show what the database round trip costs apart from the rest.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI

# path → the statement atelier runs there, for one user (its own code, not a copy)
Query = Callable[[asyncpg.Connection, str], Awaitable[object]]


async def _profile(conn: asyncpg.Connection, user: str) -> object:
    from app.db import users

    return await users.get_profile(conn, user)


async def _page(conn: asyncpg.Connection, user: str) -> object:
    from app.db import images

    return await images.page(
        conn, viewer=user, owner=user, public_only=False, pack_id=None, before=None, limit=31
    )


QUERIES: dict[str, Query] = {"/v1/me": _profile, "/v1/images": _page}


def create_app(bodies: dict[str, Any], database_url: str | None = None, user: str = "") -> FastAPI:
    pools: list[asyncpg.Pool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if database_url is not None:
            from app.config import Settings
            from app.db.pool import create_pool

            pools.append(await create_pool(Settings(), database_url))
        yield
        for pool in pools:
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    def add(path: str) -> None:
        body = bodies[path]
        query = QUERIES.get(path) if database_url is not None else None

        async def handler() -> Any:
            return body

        async def handler_with_query() -> Any:
            assert query is not None
            async with pools[0].acquire() as conn:
                await query(conn, user)
            return body

        app.add_api_route(
            path, handler if query is None else handler_with_query, methods=["GET"], name=path
        )

    for path in bodies:
        add(path)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from app.serving import http_protocol

    parser = argparse.ArgumentParser(prog="python -m bench.bare_app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bodies", type=Path, required=True)
    parser.add_argument("--max-header-bytes", type=int, default=32 * 1024)
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="uvicorn's own access log line per request, to stderr (default: on)",
    )
    parser.add_argument("--database-url", help="also run atelier's statement per request")
    parser.add_argument("--user", default="", help="whose row and images it reads")
    args = parser.parse_args(argv)
    # As `atelier serve` runs uvicorn: log_config=None, and logging set up by the caller.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(
        logging.INFO if args.access_log else logging.WARNING
    )
    uvicorn.run(
        create_app(json.loads(args.bodies.read_text()), args.database_url, args.user),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=args.access_log,
        proxy_headers=True,
        http=http_protocol(args.max_header_bytes),
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
