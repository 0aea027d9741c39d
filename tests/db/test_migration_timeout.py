"""Migrations run under MIGRATION_TIMEOUT_SECONDS on a connection of their own, not under
the pool's DB_COMMAND_TIMEOUT_SECONDS: a long migration is not cut at the pool's 30 s, and
one longer than its own limit is cancelled by the server and rolled back."""

from __future__ import annotations

from pathlib import Path

from tests.db import cli_env, connected, run_migrate_cli


def one_migration(tmp_path: Path, seconds: float) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "20990101000000_slow.sql").write_text(
        f"CREATE TABLE slow_marker (id int);\nSELECT pg_sleep({seconds});\n"
    )
    return directory


async def test_a_migration_longer_than_the_pools_command_timeout_completes(
    empty_url: str, tmp_path: Path
) -> None:
    env = cli_env(
        empty_url,
        tmp_path,
        ATELIER_MIGRATIONS_DIR=str(one_migration(tmp_path, 1.5)),
        DB_COMMAND_TIMEOUT_SECONDS="0.5",
        MIGRATION_TIMEOUT_SECONDS="30",
    )
    code, out, err = await run_migrate_cli(env, tmp_path)
    assert code == 0, err
    assert out.strip() == "applied 1 migration(s): 20990101000000"


async def test_a_migration_over_its_own_timeout_is_cancelled_and_rolled_back(
    empty_url: str, tmp_path: Path
) -> None:
    env = cli_env(
        empty_url,
        tmp_path,
        ATELIER_MIGRATIONS_DIR=str(one_migration(tmp_path, 30)),
        DB_COMMAND_TIMEOUT_SECONDS="60",
        MIGRATION_TIMEOUT_SECONDS="1",
    )
    code, out, err = await run_migrate_cli(env, tmp_path)
    assert code == 1, out + err
    assert "QueryCanceledError" in err and "statement timeout" in err, err
    async with connected(empty_url) as conn:
        assert await conn.fetchval("SELECT to_regclass('slow_marker')") is None
        assert await conn.fetchval("SELECT count(*) FROM atelier_migrations") == 0
