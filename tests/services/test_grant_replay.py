"""A grant's source id is applied once: repeating it is a replay, even when it took credits."""

from __future__ import annotations

import asyncio

import asyncpg

from app.services import credits
from tests.support.generations import add_user


async def test_repeating_an_applied_deduction_is_a_replay_not_a_conflict(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await add_user(pool, "user_d", 5)
    first = await credits.grant(db, "user_d", -5, "admin", "adm_take_all")
    assert first == credits.GrantResult(applied=True, balance=0)
    again = await credits.grant(db, "user_d", -5, "admin", "adm_take_all")
    assert again == credits.GrantResult(applied=False, balance=0)
    assert await db.fetchval("SELECT credits FROM users WHERE id = 'user_d'") == 0
    count = await db.fetchval("SELECT count(*) FROM credit_ledger WHERE source_id = 'adm_take_all'")
    assert count == 1


async def test_concurrent_repeats_of_a_deduction_apply_once_and_none_is_a_conflict(
    pool: asyncpg.Pool,
) -> None:
    await add_user(pool, "user_d", 5)

    async def one() -> credits.GrantResult:
        async with pool.acquire() as conn, conn.transaction():
            return await credits.grant(conn, "user_d", -4, "admin", "adm_dup")

    results = await asyncio.gather(*(one() for _ in range(10)))
    assert sorted(r.applied for r in results) == [False] * 9 + [True]
    assert {r.balance for r in results} == {1}
