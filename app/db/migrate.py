"""Forward-only SQL migrations: applied in order under an advisory lock, recorded with a checksum.

Each file in `migrations/` runs in its own transaction together with its record in
`atelier_migrations`. A file that was applied and then edited is refused: history is
never rewritten, a new file says what changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("atelier.migrate")

# Where the files are in a checkout or an editable install (`migrations/` beside `app/`).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# pg_advisory_lock key: the first 8 bytes of sha256("atelier.migrate"), as a signed bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"atelier.migrate").digest()[:8], "big", signed=True)


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str
    checksum: str

    @classmethod
    def from_path(cls, path: Path) -> Migration:
        version, _, name = path.stem.partition("_")
        if not (version.isdigit() and len(version) == 14 and name):
            raise MigrationError(f"{path.name}: expected <UTC timestamp YYYYMMDDHHMMSS>_<slug>.sql")
        raw = path.read_bytes()
        return cls(version, name, raw.decode(), hashlib.sha256(raw).hexdigest())


def default_directory() -> Path:
    """The migrations directory: $ATELIER_MIGRATIONS_DIR when set, else `migrations/` beside
    `app/`, else `./migrations`.

    The last case is the Docker image: it installs the package into site-packages (not
    editable), so nothing is beside `app/`, and copies the files to its working directory.
    ATELIER_MIGRATIONS_DIR is an operator's override (and lets tests run the real CLI on
    a copy of the files); it is deliberately not a Settings field.
    """
    configured = os.environ.get("ATELIER_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    if MIGRATIONS_DIR.is_dir():
        return MIGRATIONS_DIR
    return Path.cwd() / "migrations"


def discover(directory: Path | None = None) -> list[Migration]:
    """The migration files in order; a missing or empty directory is an error, never
    "nothing to apply" (that would report a database as current when it is not)."""
    directory = directory if directory is not None else default_directory()
    if not directory.is_dir():
        raise MigrationError(
            f"no migrations directory at {directory} (set ATELIER_MIGRATIONS_DIR to where "
            "the .sql files are)"
        )
    migrations = [Migration.from_path(p) for p in sorted(directory.glob("*.sql"))]
    if not migrations:
        raise MigrationError(f"no migration files (*.sql) in {directory}")
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version")
    return migrations


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS atelier_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def applied(conn: asyncpg.Connection) -> dict[str, str]:
    """version → checksum of every applied migration ({} before the first run)."""
    exists = await conn.fetchval("SELECT to_regclass('atelier_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM atelier_migrations")
    return {r["version"]: r["checksum"] for r in rows}


def check_history(migrations: list[Migration], done: dict[str, str]) -> list[Migration]:
    """The migrations still to apply; raises when an applied one was edited."""
    for m in migrations:
        if m.version in done and done[m.version] != m.checksum:
            raise MigrationError(
                f"migration {m.version}_{m.name}.sql was edited after it was applied "
                f"(checksum {done[m.version][:12]}… in the database, {m.checksum[:12]}… on disk); "
                "migrations are forward-only: restore the file and add a new migration instead"
            )
    return [m for m in migrations if m.version not in done]


async def pending(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[Migration]:
    return check_history(migrations if migrations is not None else discover(), await applied(conn))


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is pending (safe from several processes at once); returns applied versions."""
    migrations = migrations if migrations is not None else discover()
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        todo = check_history(migrations, await applied(conn))
        for m in todo:
            log.info("applying migration %s_%s", m.version, m.name)
            async with conn.transaction():
                try:
                    await conn.execute(m.sql)
                except asyncpg.PostgresError as exc:
                    # Rolled back with its transaction: nothing of this file stays behind.
                    raise MigrationError(
                        f"migration {m.version}_{m.name}.sql failed and was rolled back: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                await conn.execute(
                    "INSERT INTO atelier_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
        return [m.version for m in todo]
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
