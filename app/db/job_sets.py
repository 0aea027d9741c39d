"""SQL for a set of jobs asked for in one request (a pack's icons): created with their debits
in one statement, and read back together. Columns and views are those of app.db.jobs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from app.db.jobs import _VIEW, COLUMNS


async def create_set_with_debit(
    conn: asyncpg.Connection,
    *,
    job_ids: list[UUID],
    user_id: str,
    kind: str,
    prompts: list[str],
    params: dict[str, Any],
    cost: int,
    model: str | None,
    idempotency_key: str | None,
    request_hash: str,
) -> list[asyncpg.Record]:
    """Create a set of jobs (one per prompt), debit `cost` for each and write one ledger row
    per job: one statement, all or nothing.

    The user's row is locked first and the balance must cover them all. The first job (the
    set's head) carries the Idempotency-Key; the others are inserted only when it was, so a
    key used before (by a set or a single generation) creates nothing at all. Each job gets
    `params` plus its place in the set (`set_index`, from 0). The ledger rows follow the
    set's order, each with the balance after it, so the newest row holds the final balance.
    Returns the jobs made (columns…, balance), in no particular order; or one row whose job
    columns are NULL when nothing was made (balance short, or the key already used).
    """
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        WITH locked AS (
            SELECT id, credits FROM users WHERE id = $1 AND erased_at IS NULL FOR UPDATE
        ), wanted AS (
            SELECT w.id, w.prompt, w.n
            FROM unnest($2::uuid[], $3::text[]) WITH ORDINALITY AS w(id, prompt, n)
        ), head AS (
            INSERT INTO image_generation_jobs (
                id, user_id, status, progress, kind, prompt, params, cost, model,
                idempotency_key, request_hash)
            SELECT w.id, locked.id, 'pending', 0, $4, w.prompt,
                   $5::jsonb || jsonb_build_object('set_index', w.n - 1), $6, $7, $8, $9
            FROM locked, wanted w
            WHERE w.n = 1 AND locked.credits >= $6 * cardinality($2::uuid[])
            ON CONFLICT DO NOTHING
            RETURNING {COLUMNS}
        ), rest AS (
            INSERT INTO image_generation_jobs (
                id, user_id, status, progress, kind, prompt, params, cost, model,
                request_hash)
            SELECT w.id, head.user_id, 'pending', 0, $4, w.prompt,
                   $5::jsonb || jsonb_build_object('set_index', w.n - 1), $6, $7, $9
            FROM head, wanted w
            WHERE w.n > 1
            RETURNING {COLUMNS}
        ), debit AS (
            UPDATE users SET credits = users.credits - $6 * cardinality($2::uuid[])
            FROM head WHERE users.id = head.user_id AND $6 > 0
        ), entry AS (
            INSERT INTO credit_ledger (user_id, delta, reason, job_id, balance_after)
            SELECT head.user_id, -$6, $4, w.id, locked.credits - $6 * w.n
            FROM head, locked, wanted w
            WHERE $6 > 0
            ORDER BY w.n  -- identity values in the set's order: the last row is the newest
        ), made AS (
            SELECT * FROM head UNION ALL SELECT * FROM rest
        )
        SELECT made.*, (SELECT credits FROM locked) AS balance
        FROM (SELECT 1) AS one LEFT JOIN made ON true
        """,
        user_id,
        job_ids,
        prompts,
        kind,
        params,
        cost,
        model,
        idempotency_key,
        request_hash,
    )
    return rows


async def set_view(conn: asyncpg.Connection, user_id: str, set_id: UUID) -> list[asyncpg.Record]:
    """The caller's jobs of one set, in the set's order, with their images' keys and sizes."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        {_VIEW}
        WHERE j.user_id = $1 AND j.params ? 'set_id' AND j.params->>'set_id' = $2
        ORDER BY (j.params->>'set_index')::int
        """,
        user_id,
        str(set_id),
    )
    return rows
