"""`atelier migrate` adopts the mobile app's live database.

Forward-only files applied under an advisory lock and recorded with checksums: on an empty
database and on the app's baseline with its rows, twice in a row, from two processes at once.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from app.db.migrate import LOCK_KEY, discover, migrate, pending
from tests.db import (
    EXPECTED_VERSIONS,
    SHARED_TABLES,
    app_rows,
    baseline_columns,
    cli_env,
    connected,
    finish,
    recorded,
    schema_snapshot,
    start,
)
from tests.fakes.mobile_app import LIVE_CREDITS, LIVE_SINCE
from tests.support.polling import wait_until
from tests.support.serve import ATELIER

# adopt_shared_schema and users_and_credit_ledger
ADOPTION_VERSIONS = ("20261123000000", "20261123000100")


# --- empty database, baseline, twice --------------------------------------------------------


async def test_migrate_builds_the_whole_schema_on_an_empty_database(empty_url: str) -> None:
    async with connected(empty_url) as conn:
        assert await migrate(conn) == EXPECTED_VERSIONS
        assert [v for v, _, _ in await recorded(conn)] == EXPECTED_VERSIONS
        on_disk = {m.version: (m.name, m.checksum) for m in discover()}
        assert {v: (n, c) for v, n, c in await recorded(conn)} == on_disk
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert tables >= {*SHARED_TABLES, "credit_ledger", "atelier_migrations"}
        assert await pending(conn) == []


async def test_baseline_and_empty_databases_end_with_the_same_schema(
    live_url: str, db: asyncpg.Connection
) -> None:
    # `db` is the empty database the suite migrated once (its template).
    async with connected(live_url) as live:
        assert await migrate(live) == EXPECTED_VERSIONS
        assert await schema_snapshot(live) == await schema_snapshot(db)


async def test_migrating_the_live_database_keeps_every_app_row(live_url: str) -> None:
    async with connected(live_url) as conn:
        columns = await baseline_columns(conn)
        before = await app_rows(conn, columns)
        assert before["generated_images"] and before["subscriptions"]
        assert before["custom_prompts"] and before["image_generation_jobs"]

        await migrate(conn)

        assert await app_rows(conn, columns) == before
        users = await conn.fetch("SELECT id, email, credits, updated_at FROM users ORDER BY id")
        assert {r["id"]: r["credits"] for r in users} == LIVE_CREDITS
        assert all(r["email"] == f"{r['id']}@example.test" for r in users)
        assert all(r["updated_at"] == LIVE_SINCE for r in users)
        jobs = await conn.fetch("SELECT status FROM image_generation_jobs")
        assert [r["status"] for r in jobs] == ["pending", "pending"]


async def test_every_existing_user_gets_exactly_one_opening_balance(live_url: str) -> None:
    async with connected(live_url) as conn:
        await migrate(conn)
        rows = await conn.fetch(
            "SELECT user_id, delta, reason, balance_after, job_id, source_id FROM credit_ledger"
        )
        assert sorted((r["user_id"], r["delta"], r["balance_after"]) for r in rows) == sorted(
            (user_id, credits, credits) for user_id, credits in LIVE_CREDITS.items()
        )
        assert {r["reason"] for r in rows} == {"opening_balance"}
        assert all(r["job_id"] is None and r["source_id"] is None for r in rows)


async def test_migrating_twice_applies_nothing_and_changes_nothing(start_url: str) -> None:
    async with connected(start_url) as conn:
        assert await migrate(conn) == EXPECTED_VERSIONS
        schema = await schema_snapshot(conn)
        history = await recorded(conn)
        ledger = await conn.fetch("SELECT * FROM credit_ledger ORDER BY id")

        assert await migrate(conn) == []

        assert await schema_snapshot(conn) == schema
        assert await recorded(conn) == history
        assert await conn.fetch("SELECT * FROM credit_ledger ORDER BY id") == ledger


async def test_the_adoption_migrations_find_their_work_done_when_run_again(
    live_url: str,
) -> None:
    """The two files that adopt the live database are written to be re-runnable (IF NOT
    EXISTS, guarded inserts): run again on a database that has them, they neither fail nor
    change the schema or the ledger. (Later files need not be: they run once, recorded.)"""
    async with connected(live_url) as conn:
        await migrate(conn)
        schema = await schema_snapshot(conn)
        ledger = await conn.fetch("SELECT * FROM credit_ledger ORDER BY id")
        adoption = [m for m in discover() if m.version in ADOPTION_VERSIONS]
        assert len(adoption) == len(ADOPTION_VERSIONS)
        for m in adoption:
            async with conn.transaction():
                await conn.execute(m.sql)
        assert await schema_snapshot(conn) == schema
        assert await conn.fetch("SELECT * FROM credit_ledger ORDER BY id") == ledger


# --- two processes at once ------------------------------------------------------------------


async def waiting_on_migrate_lock(conn: asyncpg.Connection) -> int:
    """Sessions queued on the migration lock (a bigint key is classid:objid, objsubid 1)."""
    key = LOCK_KEY & 0xFFFF_FFFF_FFFF_FFFF
    value = await conn.fetchval(
        """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND classid::bigint = $1 AND objid::bigint = $2
        """,
        key >> 32,
        key & 0xFFFF_FFFF,
    )
    return int(value)


async def test_two_migrate_processes_at_once_apply_each_migration_once(
    start_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    url = start_url
    env = cli_env(url, tmp_path)
    async with connected(url) as holder:
        # Hold the migration lock until both processes are queued on it, so they really do
        # contend for it at the same moment rather than one finishing before the other starts.
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        procs = [await start([str(ATELIER), "migrate"], env, tmp_path) for _ in range(2)]

        async def both_waiting() -> bool:
            if await waiting_on_migrate_lock(holder) == 2:
                return True
            exited = [p for p in procs if p.returncode is not None]
            assert not exited, [await finish(p) for p in exited]
            return False

        try:
            await wait_until(
                both_waiting, "the two `atelier migrate` processes to wait on the lock", 60
            )
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
            results = [await finish(p) for p in procs]

    assert [code for code, _, _ in results] == [0, 0], results
    reports = sorted(out.strip().splitlines()[-1] for _, out, _ in results)
    assert reports == [
        "applied 0 migration(s)",
        f"applied {len(EXPECTED_VERSIONS)} migration(s): " + ", ".join(EXPECTED_VERSIONS),
    ]
    async with connected(url) as conn:
        assert [v for v, _, _ in await recorded(conn)] == EXPECTED_VERSIONS
        assert await pending(conn) == []
        assert await schema_snapshot(conn) == await schema_snapshot(db)  # `db`: migrated once
        opened = await conn.fetch(
            "SELECT user_id, count(*) AS n FROM credit_ledger GROUP BY user_id"
        )
        users = await conn.fetch("SELECT id FROM users")
        assert {r["user_id"]: r["n"] for r in opened} == {r["id"]: 1 for r in users}
