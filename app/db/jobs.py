"""The `image_generation_jobs` table: creation with its debit, the worker's claim, fenced writes.

Every write the worker makes after claiming is fenced on (id, attempts, status='running'):
an attempt whose lease ran out and was taken over can no longer change the job.
`progress` only ever grows (`GREATEST`): a retry keeps what the job already showed, and its
new attempt reports only what goes beyond it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.db.where import Where

COLUMNS = (
    "id, user_id, status, progress, kind, prompt, params, cost, attempts, model, "
    "input_image_key, output_image_url, error_message, error_code, image_id, idempotency_key, "
    "request_hash, created_at, updated_at, completed_at, available_at"
)
_J_COLUMNS = ", ".join("j." + c.strip() for c in COLUMNS.split(","))
# A job as the API shows it: with its image's key and size (NULL once the image is gone).
_VIEW = f"""
    SELECT {_J_COLUMNS}, i.storage_key AS image_key, i.width AS image_width,
           i.height AS image_height
    FROM image_generation_jobs j
    LEFT JOIN generated_images i ON i.id = j.image_id AND i.deleted_at IS NULL"""


async def create_with_debit(
    conn: asyncpg.Connection,
    *,
    job_id: UUID,
    user_id: str,
    kind: str,
    prompt: str,
    params: dict[str, Any],
    cost: int,
    model: str | None,
    input_image_key: str | None,
    idempotency_key: str | None,
    request_hash: str,
) -> asyncpg.Record:
    """Create the job, debit its cost and write the ledger row: one statement, all or nothing.

    The user's row is locked first, so the balance check and the debit see the same value.
    Returns (job columns…, balance): the job columns are NULL when nothing was created,
    because the balance was short or the idempotency key was already used.
    """
    row = await conn.fetchrow(
        f"""
        WITH locked AS (
            SELECT id, credits FROM users WHERE id = $2 AND erased_at IS NULL FOR UPDATE
        ), job AS (
            INSERT INTO image_generation_jobs (
                id, user_id, status, progress, kind, prompt, params, cost, model,
                input_image_key, idempotency_key, request_hash)
            SELECT $1, locked.id, 'pending', 0, $3, $4, $5, $6, $7, $8, $9, $10
            FROM locked WHERE locked.credits >= $6
            ON CONFLICT DO NOTHING
            RETURNING {COLUMNS}
        ), debit AS (
            UPDATE users SET credits = users.credits - $6
            FROM job WHERE users.id = job.user_id AND $6 > 0
        ), entry AS (
            INSERT INTO credit_ledger (user_id, delta, reason, job_id, balance_after)
            SELECT job.user_id, -$6, $3, job.id, locked.credits - $6
            FROM job, locked WHERE $6 > 0
        )
        SELECT job.*, (SELECT credits FROM locked) AS balance
        FROM (SELECT 1) AS one LEFT JOIN job ON true
        """,
        job_id,
        user_id,
        kind,
        prompt,
        params,
        cost,
        model,
        input_image_key,
        idempotency_key,
        request_hash,
    )
    assert row is not None
    return row


async def get_by_idempotency_key(
    conn: asyncpg.Connection, user_id: str, key: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM image_generation_jobs WHERE user_id = $1 AND idempotency_key = $2",
        user_id,
        key,
    )


async def claim(
    conn: asyncpg.Connection, worker_id: str, limit: int, lease_seconds: float
) -> list[asyncpg.Record]:
    """Take up to `limit` ready jobs: running, leased to `worker_id`, attempts + 1, progress at
    least 10; the last attempt's error is cleared."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        WITH ready AS (
            SELECT id FROM image_generation_jobs
            WHERE status = 'pending' AND kind IS NOT NULL AND available_at <= now()
            ORDER BY available_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        UPDATE image_generation_jobs j
        SET status = 'running', attempts = j.attempts + 1, worker_id = $1,
            lease_until = now() + make_interval(secs => $3), progress = GREATEST(j.progress, 10),
            error_message = NULL, error_code = NULL, updated_at = now()
        FROM ready WHERE j.id = ready.id
        RETURNING {_J_COLUMNS}
        """,
        worker_id,
        limit,
        lease_seconds,
    )
    return rows


async def extend_leases(
    conn: asyncpg.Connection, held: list[tuple[UUID, int]], lease_seconds: float
) -> set[UUID]:
    """Heartbeat for many attempts, (job id, attempt) each, in one statement; the ids of the
    jobs these attempts still hold (the others were taken over or have ended)."""
    rows = await conn.fetch(
        """
        UPDATE image_generation_jobs j SET lease_until = now() + make_interval(secs => $3)
        FROM unnest($1::uuid[], $2::int[]) AS held(id, attempts)
        WHERE j.id = held.id AND j.attempts = held.attempts AND j.status = 'running'
        RETURNING j.id
        """,
        [job_id for job_id, _ in held],
        [attempt for _, attempt in held],
        lease_seconds,
    )
    return {row["id"] for row in rows}


async def set_progress(
    conn: asyncpg.Connection, job_id: UUID, attempt: int, progress: int, model: str | None = None
) -> bool:
    status = await conn.execute(
        """
        UPDATE image_generation_jobs
        SET progress = GREATEST(progress, $3), model = COALESCE($4, model), updated_at = now()
        WHERE id = $1 AND attempts = $2 AND status = 'running'
        """,
        job_id,
        attempt,
        progress,
        model,
    )
    return bool(status == "UPDATE 1")


async def release(
    conn: asyncpg.Connection,
    job_id: UUID,
    attempt: int,
    *,
    delay_seconds: float,
    error: str | None,
    error_code: str | None,
) -> bool:
    """Hand the job back to the queue (a retry later, or a graceful shutdown), keeping its
    progress; `error` and its code say why the attempt failed until the next one starts."""
    status = await conn.execute(
        """
        UPDATE image_generation_jobs
        SET status = 'pending', lease_until = NULL, worker_id = NULL,
            available_at = now() + make_interval(secs => $3), error_message = $4,
            error_code = $5, updated_at = now()
        WHERE id = $1 AND attempts = $2 AND status = 'running'
        """,
        job_id,
        attempt,
        delay_seconds,
        error,
        error_code,
    )
    return bool(status == "UPDATE 1")


async def mark_failed(
    conn: asyncpg.Connection, job_id: UUID, attempt: int | None, error: str, error_code: str
) -> bool:
    """running → failed (fenced on `attempt`; None for the reaper, which checks the lease)."""
    status = await conn.execute(
        """
        UPDATE image_generation_jobs
        SET status = 'failed', error_message = $3, error_code = $4, lease_until = NULL,
            updated_at = now(), completed_at = now()
        WHERE id = $1 AND status = 'running'
          AND ($2::int IS NULL AND lease_until < now() OR attempts = $2)
        """,
        job_id,
        attempt,
        error,
        error_code,
    )
    return bool(status == "UPDATE 1")


async def complete(
    conn: asyncpg.Connection,
    job_id: UUID,
    attempt: int,
    *,
    image_id: UUID,
    image_url: str,
    storage_key: str,
    model: str,
    visibility: str,
    width: int,
    height: int,
    pack_id: UUID | None,
    announce_answered: bool = False,
) -> bool:
    """Mark the job completed and record its image, fenced on the attempt: one statement,
    all or nothing (False, and nothing written, when the attempt no longer holds the job).

    It also announces progress 90 (stored), preceded by 60 (answered) when
    `announce_answered` (the worker skipped that write: storing was quick), before the
    trigger announces 100: a NOTIFY sent while the statement runs is queued ahead of the
    ones its AFTER triggers send at its end, and all of them go out at commit, in that
    order (the steps' VALUES are scanned in the order written, against the one row of
    `done`). The row itself goes from 60 (or 10) to 100, as before it did within a
    millisecond; one statement instead of a progress write and a four-statement
    transaction. `pack_id` is kept only if that pack (the job owner's) still exists; the
    lock keeps it from going between this look and the foreign key's check.
    """
    row = await conn.fetchrow(
        """
        WITH done AS (
            UPDATE image_generation_jobs
            SET status = 'completed', progress = 100, image_id = $1, output_image_url = $3,
                model = $5, lease_until = NULL, completed_at = now(), updated_at = now()
            WHERE id = $2 AND attempts = $10 AND status = 'running'
            RETURNING id, user_id, prompt
        ), stored AS (
            SELECT pg_notify('atelier_jobs', json_build_object(
                'id', id, 'user_id', user_id, 'status', 'running', 'progress', step)::text)
            FROM done, (VALUES (60), (90)) AS steps(step)
            WHERE step = 90 OR $11
        ), image AS (
            INSERT INTO generated_images (
                id, user_id, image_url, prompt, storage_key, job_id, model, visibility,
                width, height, pack_id)
            SELECT $1, done.user_id, $3, done.prompt, $4, done.id, $5, $6, $7, $8,
                   (SELECT p.id FROM icon_packs p
                    WHERE p.id = $9 AND p.user_id = done.user_id FOR KEY SHARE)
            FROM done
            RETURNING id
        )
        SELECT (SELECT count(*) FROM stored) AS announced, (SELECT count(*) FROM image) AS images
        """,
        image_id,
        job_id,
        image_url,
        storage_key,
        model,
        visibility,
        width,
        height,
        pack_id,
        attempt,
        announce_answered,
    )
    assert row is not None
    return bool(row["images"] == 1)


async def fate(conn: asyncpg.Connection, job_id: UUID) -> asyncpg.Record | None:
    """The job's status and the storage key of the image it made, if any (`storage_key`);
    None when there is no such job (deleted with its user)."""
    return await conn.fetchrow(
        """
        SELECT j.status, (SELECT i.storage_key FROM generated_images i
                          WHERE i.job_id = j.id LIMIT 1) AS storage_key
        FROM image_generation_jobs j WHERE j.id = $1
        """,
        job_id,
    )


async def expired(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Running jobs whose lease ran out (their worker died or stalled), oldest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT id, attempts FROM image_generation_jobs
        WHERE status = 'running' AND kind IS NOT NULL AND lease_until < now()
        ORDER BY lease_until
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return rows


async def requeue_expired(conn: asyncpg.Connection, job_id: UUID, attempt: int) -> bool:
    status = await conn.execute(
        """
        UPDATE image_generation_jobs
        SET status = 'pending', lease_until = NULL, worker_id = NULL,
            available_at = now(), error_message = 'the worker running it stopped responding',
            error_code = 'worker_lost', updated_at = now()
        WHERE id = $1 AND attempts = $2 AND status = 'running' AND lease_until < now()
        """,
        job_id,
        attempt,
    )
    return bool(status == "UPDATE 1")


async def get_view(conn: asyncpg.Connection, job_id: UUID, user_id: str) -> asyncpg.Record | None:
    """The caller's job with its image's key and size (another user's job: None)."""
    return await conn.fetchrow(
        f"""
        {_VIEW}
        WHERE j.id = $1 AND j.user_id = $2
        """,
        job_id,
        user_id,
    )


async def page_for_user(
    conn: asyncpg.Connection,
    user_id: str,
    *,
    statuses: list[str] | None,
    before: tuple[datetime, UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The caller's jobs that the service made, newest first, after the keyset `before`
    (only the filters given: `Where`; with a cursor it seeks to it in the user's index)."""
    where = Where(user_id, limit)
    where.add("j.user_id = $1 AND j.kind IS NOT NULL")
    if statuses is not None:
        where.add("j.status = ANY({}::text[])", statuses)
    if before is not None:
        where.add("(j.created_at, j.id) < ({}, {})", *before)
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        {_VIEW}
        WHERE {where}
        ORDER BY j.created_at DESC, j.id DESC
        LIMIT $2
        """,
        *where.args,
    )
    return rows
