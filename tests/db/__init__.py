"""Helpers for the database tests: connections, schema dumps, and the real `atelier` CLI."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from app.db.migrate import discover
from tests.support.serve import ATELIER

REPO = Path(__file__).resolve().parents[2]
SHARED_TABLES = (
    "users",
    "generated_images",
    "custom_prompts",
    "subscriptions",
    "image_generation_jobs",
)
EXPECTED_VERSIONS = [m.version for m in discover(REPO / "migrations")]


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def schema_snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a migration could change in the public schema, in a comparable form."""
    queries = {
        "columns": """
            SELECT table_name, column_name, ordinal_position, data_type, udt_name,
                   is_nullable, column_default, is_identity, datetime_precision
            FROM information_schema.columns WHERE table_schema = 'public'
            ORDER BY table_name, ordinal_position""",
        "indexes": """
            SELECT tablename, indexname, indexdef FROM pg_indexes
            WHERE schemaname = 'public' ORDER BY tablename, indexname""",
        "constraints": """
            SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid),
                   convalidated
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace
            ORDER BY 1, 2""",
        "triggers": """
            SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
            WHERE NOT tgisinternal
              AND tgrelid IN (SELECT oid FROM pg_class
                              WHERE relnamespace = 'public'::regnamespace)
            ORDER BY 1, 2""",
        "functions": """
            SELECT proname, pg_get_functiondef(oid) FROM pg_proc
            WHERE pronamespace = 'public'::regnamespace ORDER BY 1""",
    }
    return {k: [tuple(r) for r in await conn.fetch(q)] for k, q in queries.items()}


async def recorded(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    rows = await conn.fetch(
        "SELECT version, name, checksum FROM atelier_migrations ORDER BY version"
    )
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


async def app_rows(conn: asyncpg.Connection, columns: dict[str, list[str]]) -> dict[str, Any]:
    """Every row of the shared tables, in the columns the app knows (`columns`)."""
    out: dict[str, Any] = {}
    for table, names in columns.items():
        cols = ", ".join(f'"{c}"' for c in names)
        out[table] = [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM {table} ORDER BY id")]
    return out


async def baseline_columns(conn: asyncpg.Connection) -> dict[str, list[str]]:
    return {
        table: [
            r["column_name"]
            for r in await conn.fetch(
                """SELECT column_name FROM information_schema.columns
                   WHERE table_schema = 'public' AND table_name = $1
                   ORDER BY ordinal_position""",
                table,
            )
        ]
        for table in SHARED_TABLES
    }


def cli_env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"TEST_DATABASE_URL", "DATABASE_URL", "DIRECT_URL", "ATELIER_MIGRATIONS_DIR"}
    }
    env.update(
        DATABASE_URL=url,
        LOG_JSON="false",
        ENV="test",
        AUTH="dev",
        DATA_DIR=str(tmp_path / "data"),
    )
    env.update(extra)
    return env


async def start(argv: list[str], env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    # cwd: a directory without a `.env`, so only `env` configures the process.
    return await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_migrate_cli(env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    return await finish(await start([str(ATELIER), "migrate"], env, cwd))
