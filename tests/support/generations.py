"""Users and jobs made the way the service makes them: a user with its signup ledger row,
and a job asked for through the service call POST /v1/generations makes (the job, its
debit and its ledger row in one statement)."""

from __future__ import annotations

import uuid

import asyncpg

from app.config import Settings
from app.db import jobs as jobs_db
from app.db import pool as db_pool
from app.db import users as users_db
from app.schemas.generations import GenerationCreate
from app.services import generations
from app.services.storage.base import Storage
from app.services.users import User


async def add_user(pool: asyncpg.Pool, user_id: str, credits: int = 10) -> User:
    async with pool.acquire() as conn:
        row = await users_db.create_with_signup(conn, user_id, f"{user_id}@example.test", credits)
    assert row is not None
    return User.from_row(row)


async def create_job(
    pool: asyncpg.Pool,
    settings: Settings,
    storage: Storage,
    user: User,
    prompt: str = "a red fox",
    *,
    model: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[asyncpg.Record, bool]:
    """Ask for an image as POST /v1/generations does: one pooled connection and no
    transaction around the call; the kind's cost comes from `settings`. Returns
    (job, created_now); too few credits raise InsufficientCredits (the route's 402)."""
    body = GenerationCreate(prompt=prompt, model=model)
    async with pool.acquire() as conn:
        return await generations.create(conn, settings, user, body, idempotency_key)


async def debit(conn: asyncpg.Connection, user_id: str, cost: int, kind: str = "generate") -> int:
    """Charge `cost` for a fresh job with the live debit statement (jobs.create_with_debit,
    which the service's submission runs), for tests that hold a bare connection; returns
    the balance after. Runs in its own transaction unless the caller has one."""
    await db_pool.init_connection(conn)  # the service's jsonb codec, for the job's params
    row = await jobs_db.create_with_debit(
        conn,
        job_id=uuid.uuid4(),
        user_id=user_id,
        kind=kind,
        prompt="a debit",
        params={},
        cost=cost,
        model=None,
        input_image_key=None,
        idempotency_key=None,
        request_hash="debit",
    )
    assert row["id"] is not None, f"{user_id} could not pay {cost} (balance {row['balance']})"
    balance: int = row["balance"] - cost
    return balance
