"""The `atelier` command: serve | worker | migrate | dev-token | check-ledger | grant |
webhooks."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.config import Settings
from app.logs import configure_logging, stop_logging

if TYPE_CHECKING:
    from fastapi import FastAPI


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        messages = "; ".join(str(e.get("msg", e)) for e in exc.errors())
        raise SystemExit(f"atelier: invalid settings: {messages}") from exc


async def _migrate(settings: Settings) -> list[str]:
    from app.db import migrate, pool

    conn = await pool.connect(settings, timeout_seconds=settings.migration_timeout_seconds)
    try:
        return await migrate.migrate(conn)
    finally:
        await conn.close()


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from app.db.migrate import MigrationError

    try:
        done = asyncio.run(_migrate(settings))
    except MigrationError as exc:
        print(f"atelier migrate: {exc}", file=sys.stderr)
        return 1
    print(f"applied {len(done)} migration(s)" + (": " + ", ".join(done) if done else ""))
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.serving import HeadLimitedHttpToolsProtocol, http_protocol

    if settings.migrate_on_start and cmd_migrate(settings, args) != 0:
        return 1
    if "public_base_url" not in settings.model_fields_set:
        # Local-storage links must point at where this server listens.
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        settings = settings.model_copy(update={"public_base_url": f"http://{host}:{args.port}"})
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with the previous
    # handler back in place. Left at the default, that kills the process before atexit runs,
    # so the embedded PostgreSQL would be left running: exit normally instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    common: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_config": None,
        "proxy_headers": True,
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        # Open streams (SSE) never end by themselves: cut them after a few seconds so the
        # worker's drain (SHUTDOWN_GRACE_SECONDS) still fits a 30 s termination grace.
        "timeout_graceful_shutdown": 5,
    }
    if args.workers > 1:
        _hand_to_workers(settings)
        # uvicorn starts each process fresh (spawn) and builds its app there, by name; the
        # processes share the listening socket, and the kernel spreads connections over them.
        uvicorn.run(
            "app.cli:worker_app",
            factory=True,
            workers=args.workers,
            http=HeadLimitedHttpToolsProtocol,  # the limit is set by worker_app
            **common,
        )
        return 0
    uvicorn.run(
        create_app(settings),
        # httptools with a cap on each request's head (uvicorn sets none for httptools).
        http=http_protocol(settings.max_header_bytes),
        **common,
    )
    return 0


def _hand_to_workers(settings: Settings) -> None:
    """Put what this process decided into the environment `serve --workers` processes start
    with: where the database is (the embedded one is started here, once, and stays up while
    this process lives), that it is migrated, and the public URL."""
    from app.db import pool

    if settings.database_url is None:
        os.environ["DATABASE_URL"] = pool.database_url(settings)
    os.environ["MIGRATE_ON_START"] = "false"
    os.environ["PUBLIC_BASE_URL"] = settings.public_base_url


def worker_app() -> FastAPI:
    """The app of one `atelier serve --workers N` process (uvicorn calls it in each)."""
    from app.main import create_app
    from app.serving import HeadLimitedHttpToolsProtocol

    settings = _settings()
    configure_logging(settings.log_level, settings.logs_as_json)
    # Read per connection, and this process serves none before its app is built.
    HeadLimitedHttpToolsProtocol.max_head_bytes = settings.max_header_bytes
    app = create_app(settings)
    lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def writing_logs_out(app: FastAPI) -> AsyncIterator[Any]:
        # uvicorn ends a worker process by raising the SIGTERM it caught again with the
        # default handler back: the process dies there, before atexit runs stop_logging, with
        # what the log thread still gathers (its last GATHER_SECONDS of lines). So the lines
        # are written out when the app has shut down, and uvicorn's last ones directly.
        try:
            async with lifespan(app) as state:
                yield state
        finally:
            stop_logging()

    app.router.lifespan_context = writing_logs_out
    return app


async def _worker(settings: Settings) -> None:
    from contextlib import AsyncExitStack

    from app.main import open_runtime, run_worker
    from app.services.realtime import WORKER_CHANNELS

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with AsyncExitStack() as stack:
        runtime = await open_runtime(stack, settings, channels=WORKER_CHANNELS)
        await run_worker(runtime, settings, stop)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    if settings.migrate_on_start and cmd_migrate(settings, args) != 0:
        return 1
    asyncio.run(_worker(settings))
    return 0


def cmd_dev_token(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import devauth
    from app.services.auth import MAX_SUB_LENGTH, usable_subject

    if settings.auth != "dev":
        print("atelier dev-token: AUTH is not dev; sign in through Clerk instead", file=sys.stderr)
        return 2
    if not usable_subject(args.user_id):  # the server would refuse the token it names
        print(
            f"atelier dev-token: the user id must be 1 to {MAX_SUB_LENGTH} characters",
            file=sys.stderr,
        )
        return 2
    # DATA_DIR is relative to the working directory: run elsewhere, this would make a key of
    # its own and sign a token the running server refuses. Say which key, and make none
    # unless asked to.
    path = settings.dev_key_path.absolute()
    data_dir = path.parent
    if not args.new_key and not path.exists():
        print(
            f"atelier dev-token: no dev key in {data_dir} (DATA_DIR), so no server signs "
            "with it: `atelier serve` makes one in its own DATA_DIR when it starts. Run this "
            "from the directory `atelier serve` runs in, or set DATA_DIR to the one it uses "
            "(--new-key makes a key here, for a server yet to start with this DATA_DIR).",
            file=sys.stderr,
        )
        return 1
    key = devauth.load_or_create_key(path)
    print(devauth.mint(settings, key, args.user_id, email=args.email, ttl_seconds=args.ttl))
    print(
        f"atelier dev-token: signed with the dev key in {data_dir} (DATA_DIR); "
        "only a server using that directory accepts it",
        file=sys.stderr,
    )
    return 0


async def _check_ledger(settings: Settings) -> int:
    from app.db import pool
    from app.services import credits

    conn = await pool.connect(settings, timeout_seconds=settings.long_statement_timeout_seconds)
    try:
        bad, unopened = await credits.check(conn)
    finally:
        await conn.close()
    for row in bad:
        print(
            f"MISMATCH user {row['id']}: credits={row['credits']} "
            f"ledger sum={row['total']} last balance_after={row['last_balance']}"
        )
    if unopened:
        print(f"note: {unopened} user(s) have no ledger entry yet (opened on their next request)")
    if bad:
        print(f"check-ledger: {len(bad)} balance(s) changed behind the ledger's back")
        return 1
    print("check-ledger: every balance matches its ledger")
    return 0


def cmd_check_ledger(settings: Settings, _: argparse.Namespace) -> int:
    return asyncio.run(_check_ledger(settings))


async def _replay(settings: Settings, provider: str | None, event_id: str | None) -> int:
    from contextlib import AsyncExitStack

    import httpx

    from app.db import pool as db_pool
    from app.main import open_stripe, webhook_handlers
    from app.services import webhooks
    from app.services.storage.factory import build_storage
    from app.services.users import ClerkDirectory, Users

    async with AsyncExitStack() as stack:
        url = await asyncio.to_thread(db_pool.database_url, settings)
        pool = await db_pool.create_pool(settings.model_copy(update={"db_pool_min_size": 1}), url)
        stack.push_async_callback(pool.close)
        storage = await asyncio.to_thread(build_storage, settings)
        stack.push_async_callback(storage.aclose)
        http = httpx.AsyncClient(timeout=settings.outbound_timeout_seconds)
        stack.push_async_callback(http.aclose)
        directory = ClerkDirectory(settings, http)
        stripe_api = await open_stripe(stack, settings)
        handlers = webhook_handlers(
            settings, stripe_api, pool, storage, Users(settings, directory), directory
        )
        results = await webhooks.replay(pool, handlers, provider, event_id)
    failed = 0
    for result in results:
        if result.error is None:
            print(f"{result.provider} {result.event_id} ({result.type}): {result.outcome}")
        else:
            failed += 1
            print(f"{result.provider} {result.event_id} ({result.type}): FAILED {result.error}")
    print(f"webhooks replay: {len(results) - failed} applied, {failed} failed")
    return 1 if failed else 0


def cmd_webhooks_replay(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_replay(settings, args.provider, args.event_id))


async def _grant(settings: Settings, user_id: str, delta: int, reason: str) -> int:
    import getpass

    from app.db import pool
    from app.errors import AppError
    from app.services import admin

    who = f"cli:{getpass.getuser()}"
    conn = await pool.connect(settings)
    try:
        result = await admin.adjust_credits(conn, who, user_id, delta, reason)
    except AppError as exc:
        print(f"atelier grant: {exc.detail or exc.title}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    print(f"{user_id}: {delta:+d} credit(s); balance {result.balance}")
    return 0


def cmd_grant(settings: Settings, args: argparse.Namespace) -> int:
    reason = args.reason.strip()
    if (
        not 0 < abs(args.credits) <= 1_000_000
        or not reason
        or "\x00" in reason
        or len(reason) > 500
    ):
        print(
            "atelier grant: CREDITS is 1 to 1000000 (negative to take) "
            "and --reason 1 to 500 characters",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(_grant(settings, args.user_id, args.credits, reason))


def openapi_json(settings: Settings) -> str:
    """The OpenAPI document, as /openapi.json serves it, formatted for a diff."""
    import json

    from app.main import create_app

    return json.dumps(create_app(settings).openapi(), indent=2, ensure_ascii=False) + "\n"


def cmd_openapi(settings: Settings, args: argparse.Namespace) -> int:
    text = openapi_json(settings)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the API (migrates first unless MIGRATE_ON_START=false)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the port (each with its own pool and in-process worker)",
    )
    serve.set_defaults(func=cmd_serve)
    sub.add_parser(
        "worker", help="run a job worker only (SIGTERM: stop claiming, finish or hand back)"
    ).set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply pending migrations").set_defaults(func=cmd_migrate)
    token = sub.add_parser("dev-token", help="print a dev bearer token (AUTH=dev)")
    token.add_argument("user_id")
    token.add_argument("--email", default=None)
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
    token.add_argument(
        "--new-key",
        action="store_true",
        help="make the dev key if DATA_DIR has none (else that is an error: a running server "
        "would refuse the token)",
    )
    token.set_defaults(func=cmd_dev_token)
    sub.add_parser(
        "check-ledger", help="verify every balance against its ledger (exit 1 on a mismatch)"
    ).set_defaults(func=cmd_check_ledger)
    hooks = sub.add_parser("webhooks", help="stored incoming webhook events")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", required=True)
    replay = hooks_sub.add_parser(
        "replay", help="re-run stored events that did not complete (exit 1 if any still fails)"
    )
    replay.add_argument("--provider", choices=("stripe", "clerk"), default=None)
    replay.add_argument("--event-id", default=None)
    replay.set_defaults(func=cmd_webhooks_replay)
    grant = sub.add_parser(
        "grant",
        help="add (or, negative, take) credits through the ledger as an administrator would",
    )
    grant.add_argument("user_id")
    grant.add_argument("credits", type=int, help="credits to add; negative to take")
    grant.add_argument("--reason", required=True, help="why: kept as the ledger row's note")
    grant.set_defaults(func=cmd_grant)
    document = sub.add_parser(
        "openapi", help="write the OpenAPI document (clients/typescript generates from it)"
    )
    document.add_argument("--output", default="-", help="a file; - (default) for stdout")
    document.set_defaults(func=cmd_openapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = _settings()
    configure_logging(settings.log_level, settings.logs_as_json)
    code: int = args.func(settings, args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
