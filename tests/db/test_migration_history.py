"""History is never rewritten: an edited migration is refused, a failing one leaves nothing
behind, and a missing directory is an error rather than "nothing to apply"."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from app.db.migrate import MigrationError, discover, migrate, pending
from tests.db import (
    EXPECTED_VERSIONS,
    REPO,
    cli_env,
    connected,
    finish,
    recorded,
    run_migrate_cli,
    start,
)


def copy_migrations(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(REPO / "migrations", target)
    return target


@pytest.mark.parametrize("which", [0, -1])
async def test_an_applied_migration_that_was_edited_is_refused(
    which: int, empty_url: str, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path)
    async with connected(empty_url) as conn:
        await migrate(conn, discover(directory))
        history = await recorded(conn)
        edited = sorted(directory.glob("*.sql"))[which]
        edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")

        with pytest.raises(MigrationError) as refused:
            await migrate(conn, discover(directory))
        message = str(refused.value)
        assert edited.name in message
        assert "edited after it was applied" in message
        assert "add a new migration" in message
        assert await recorded(conn) == history

        with pytest.raises(MigrationError, match=edited.name):
            await pending(conn, discover(directory))
        # The lock was released on the way out: restoring the file lets migrate run again.
        edited.write_text(edited.read_text().removesuffix("\n-- a harmless-looking edit\n"))
        assert await migrate(conn, discover(directory)) == []


async def test_cli_refuses_an_edited_migration_with_one_line_and_exit_1(
    empty_url: str, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path)
    env = cli_env(empty_url, tmp_path, ATELIER_MIGRATIONS_DIR=str(directory))
    code, out, err = await run_migrate_cli(env, tmp_path)
    assert code == 0, err
    assert out.strip() == (
        f"applied {len(EXPECTED_VERSIONS)} migration(s): " + ", ".join(EXPECTED_VERSIONS)
    )

    edited = sorted(directory.glob("*.sql"))[0]
    edited.write_text(edited.read_text().replace("IF NOT EXISTS", "IF NOT EXISTS ", 1))
    code, out, err = await run_migrate_cli(env, tmp_path)

    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"atelier migrate: migration {edited.name} was edited after it was")


async def test_a_failing_migration_is_rolled_back_and_not_recorded(
    empty_url: str, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path)
    broken = directory / "20991231000000_broken.sql"
    broken.write_text(
        "CREATE TABLE atelier_probe (id int);\n"
        "INSERT INTO atelier_probe VALUES (1);\n"
        "SELECT 1 / 0;\n"
    )
    async with connected(empty_url) as conn:
        with pytest.raises(MigrationError) as failed:
            await migrate(conn, discover(directory))
        assert broken.name in str(failed.value)
        assert "DivisionByZeroError" in str(failed.value)
        assert [v for v, _, _ in await recorded(conn)] == EXPECTED_VERSIONS
        assert await conn.fetchval("SELECT to_regclass('atelier_probe')") is None

        broken.write_text("CREATE TABLE atelier_probe (id int);\n")
        assert await migrate(conn, discover(directory)) == ["20991231000000"]
        assert await conn.fetchval("SELECT to_regclass('atelier_probe')::text") == "atelier_probe"


async def test_missing_migrations_directory_is_an_error_not_nothing_to_apply(
    empty_url: str, tmp_path: Path
) -> None:
    with pytest.raises(MigrationError, match="no migrations directory"):
        discover(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MigrationError, match="no migration files"):
        discover(tmp_path / "empty")

    env = cli_env(empty_url, tmp_path, ATELIER_MIGRATIONS_DIR=str(tmp_path / "nowhere"))
    code, out, err = await run_migrate_cli(env, tmp_path)
    assert code == 1
    assert out == ""
    assert err.strip() == (
        f"atelier migrate: no migrations directory at {tmp_path / 'nowhere'} "
        "(set ATELIER_MIGRATIONS_DIR to where the .sql files are)"
    )
    async with connected(empty_url) as conn:
        assert await conn.fetchval("SELECT to_regclass('users')") is None


async def test_installed_package_finds_the_migrations_in_its_working_directory(
    empty_url: str, tmp_path: Path
) -> None:
    """The Docker layout: `app` installed into site-packages (nothing beside it), the
    migrations copied to the working directory. It must apply them, not report 0."""
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "app", site / "app", ignore=shutil.ignore_patterns("__pycache__"))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    shutil.copytree(REPO / "migrations", workdir / "migrations")
    env = cli_env(empty_url, tmp_path, PYTHONPATH=str(site))

    proc = await start([sys.executable, "-m", "app.cli", "migrate"], env, workdir)
    code, out, err = await finish(proc)

    assert code == 0, err
    assert out.strip().startswith(f"applied {len(EXPECTED_VERSIONS)} migration(s)")
    async with connected(empty_url) as conn:
        assert [v for v, _, _ in await recorded(conn)] == EXPECTED_VERSIONS
