"""`atelier grant USER_ID CREDITS --reason TEXT`, run as the real command against a real
database: the adjustment goes through the ledger like the admin route's, and an unknown user
or a result below zero exits non-zero with a message and changes nothing."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from app.services import credits
from tests.e2e.test_check_ledger_cli import check_ledger
from tests.support.generations import add_user

ATELIER = Path(sys.executable).with_name("atelier")


async def grant(db_url: str, cwd: Path, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ)
    env.pop("TEST_DATABASE_URL", None)
    env.pop("DIRECT_URL", None)
    env.update(DATABASE_URL=db_url, LOG_JSON="false", DATA_DIR=str(cwd / "data"))
    process = await asyncio.create_subprocess_exec(
        str(ATELIER),
        "grant",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_grant_tops_up_and_takes_back_through_the_ledger(
    db: asyncpg.Connection, db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await add_user(pool, "user_cli", 5)

    code, out, err = await grant(db_url, tmp_path, "user_cli", "20", "--reason", "dev top-up")
    assert code == 0, out + err
    assert "balance 25" in out
    code, out, err = await grant(db_url, tmp_path, "user_cli", "-25", "--reason", "back to 0")
    assert code == 0, out + err
    assert "balance 0" in out

    rows = await db.fetch(
        "SELECT delta, note, source_id FROM credit_ledger"
        " WHERE user_id = 'user_cli' AND reason = 'admin' ORDER BY id"
    )
    assert [(r["delta"], r["note"]) for r in rows] == [(20, "dev top-up"), (-25, "back to 0")]
    assert all(r["source_id"].startswith("admin:cli:") for r in rows)
    code, out, err = await check_ledger(db_url, tmp_path)
    assert code == 0, out + err


async def test_grant_refuses_an_unknown_user_and_a_negative_result(
    db: asyncpg.Connection, db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await add_user(pool, "user_cli", 5)

    code, out, err = await grant(db_url, tmp_path, "user_nobody", "5", "--reason", "typo")
    assert code == 1 and "No such user" in err, out + err
    code, out, err = await grant(db_url, tmp_path, "user_cli", "-6", "--reason", "too much")
    assert code == 1 and "negative balance (5)" in err, out + err
    code, out, err = await grant(db_url, tmp_path, "user_cli", "0", "--reason", "nothing")
    assert code == 2 and "CREDITS" in err, out + err
    code, out, err = await grant(db_url, tmp_path, "user_cli", "5")
    assert code == 2 and "--reason" in err, out + err

    assert await db.fetchval("SELECT credits FROM users WHERE id = 'user_cli'") == 5
    bad, _ = await credits.check(db)
    assert bad == []
