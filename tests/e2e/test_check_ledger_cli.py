"""`atelier check-ledger`, run as the real command against a real database."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import asyncpg

from app.config import Settings
from app.services import credits
from app.services.storage.base import Storage
from tests.support.generations import add_user, create_job
from tests.support.serve import ATELIER


async def check_ledger(db_url: str, cwd: Path) -> tuple[int, str, str]:
    assert ATELIER.exists(), ATELIER
    env = dict(os.environ)
    env.pop("TEST_DATABASE_URL", None)
    env.pop("DIRECT_URL", None)
    env.update(DATABASE_URL=db_url, LOG_JSON="false", DATA_DIR=str(cwd / "data"))
    process = await asyncio.create_subprocess_exec(
        str(ATELIER),
        "check-ledger",
        cwd=cwd,  # no .env of the checkout is read
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_check_ledger_names_the_user_whose_balance_changed_behind_its_back(
    db: asyncpg.Connection,
    db_url: str,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    storage: Storage,
    tmp_path: Path,
) -> None:
    honest = await add_user(pool, "user_honest", 5)
    await add_user(pool, "user_tampered", 5)
    _, created = await create_job(pool, make_settings(cost_generate=2), storage, honest)
    assert created
    await credits.grant(db, "user_tampered", 4, "purchase", "evt_1")
    # a user the mobile app created has no ledger yet: noted, not a mismatch
    await db.execute("INSERT INTO users (id, email, credits) VALUES ('user_app', 'a@x.test', 3)")

    code, out, err = await check_ledger(db_url, tmp_path)
    assert code == 0, out + err
    assert "MISMATCH" not in out
    assert "1 user(s) have no ledger entry" in out

    await db.execute("UPDATE users SET credits = credits + 3 WHERE id = 'user_tampered'")
    code, out, err = await check_ledger(db_url, tmp_path)
    assert code == 1, out + err
    assert "user_tampered" in out
    assert "credits=12" in out and "ledger sum=9" in out
    assert "user_honest" not in out
