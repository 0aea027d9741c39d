"""The floor the reads bench compares `atelier serve` with: bare FastAPI handlers that return
the same JSON, served by the same uvicorn with the same options as `atelier serve`.

    python -m bench.bare_app --port P --bodies FILE [--access-log | --no-access-log]

FILE holds {"/healthz": ..., "/v1/me": ..., "/v1/images": ...}: what `atelier serve`
answered on each path. Each handler returns its JSON as a dict (FastAPI encodes it): no
middleware, no authentication, no database.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI


def create_app(bodies: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    def add(path: str) -> None:
        body = bodies[path]

        async def handler() -> Any:
            return body

        app.add_api_route(path, handler, methods=["GET"], name=path)

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
        create_app(json.loads(args.bodies.read_text())),
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
