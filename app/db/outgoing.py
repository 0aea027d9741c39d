"""The outgoing-webhook tables: `webhook_endpoints`, `webhook_deliveries`, `webhook_attempts`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

_ENDPOINT = (
    "id, user_id, url, events, created_at, CASE WHEN previous_secret_expires_at > now() "
    "THEN previous_secret_expires_at END AS previous_secret_expires_at, disabled_at"
)
_DELIVERY = (
    "id, endpoint_id, type, job_id, status, attempts, next_attempt_at, last_status, "
    "last_error, delivered_at, created_at"
)


async def insert_endpoint(
    conn: asyncpg.Connection,
    endpoint_id: uuid.UUID,
    user_id: str,
    url: str,
    events: list[str],
    secret: str,
    most: int,
) -> asyncpg.Record | None:
    """The new endpoint; None when the user has `most` already (nothing is inserted)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        INSERT INTO webhook_endpoints (id, user_id, url, events, secret)
        SELECT $1, $2, $3, $4, $5
        WHERE (SELECT count(*) FROM webhook_endpoints WHERE user_id = $2) < $6
        RETURNING {_ENDPOINT}
        """,
        endpoint_id,
        user_id,
        url,
        events,
        secret,
        most,
    )
    return row


async def endpoints_for(conn: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE user_id = $1 ORDER BY created_at, id",
        user_id,
    )
    return rows


async def endpoint(
    conn: asyncpg.Connection, endpoint_id: uuid.UUID, user_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = $1 AND user_id = $2",
        endpoint_id,
        user_id,
    )


async def lock_endpoint(
    conn: asyncpg.Connection, endpoint_id: uuid.UUID, user_id: str
) -> str | None:
    """Lock the user's endpoint until this transaction ends; its URL (None: not theirs)."""
    url: str | None = await conn.fetchval(
        # NO KEY: the job-end trigger's foreign-key check (a delivery queued meanwhile) goes on
        "SELECT url FROM webhook_endpoints WHERE id = $1 AND user_id = $2 FOR NO KEY UPDATE",
        endpoint_id,
        user_id,
    )
    return url


async def update_endpoint(
    conn: asyncpg.Connection,
    endpoint_id: uuid.UUID,
    user_id: str,
    url: str | None,
    events: list[str] | None,
    enabled: bool | None,
) -> asyncpg.Record | None:
    """Set what is given (None: unchanged; a pause keeps its first time); None when the
    endpoint is not theirs."""
    return await conn.fetchrow(
        f"""
        UPDATE webhook_endpoints
        SET url = coalesce($3, url),
            events = coalesce($4, events),
            disabled_at = CASE WHEN $5 THEN NULL
                               WHEN NOT $5 THEN coalesce(disabled_at, now())
                               ELSE disabled_at END
        WHERE id = $1 AND user_id = $2
        RETURNING {_ENDPOINT}
        """,
        endpoint_id,
        user_id,
        url,
        events,
        enabled,
    )


async def reschedule_pending(
    conn: asyncpg.Connection,
    endpoint_id: uuid.UUID,
    *,
    enabled: bool | None,
    moved: bool,
    lease_seconds: float,
) -> None:
    """After a change to the endpoint: a pause parks its pending deliveries (due at
    'infinity', so the claim's index scan never meets them); a resume makes the parked ones
    due in a lease, since one may be a delivery parked mid-attempt (sent now, a second
    sender would send it beside the first); a new URL makes due now those waiting out a
    backoff longer than a lease (a shorter wait may be a claim's lease). clock_timestamp(),
    not now(): a claim committed since this transaction began set its lease from a later
    time than now()."""
    await conn.execute(
        """
        UPDATE webhook_deliveries
        SET next_attempt_at = CASE
            WHEN $2 IS FALSE THEN 'infinity'
            WHEN next_attempt_at = 'infinity' THEN clock_timestamp() + make_interval(secs => $4)
            ELSE clock_timestamp() END
        WHERE endpoint_id = $1 AND status = 'pending' AND (
            ($2 IS FALSE AND next_attempt_at < 'infinity')
            OR ($2 AND next_attempt_at = 'infinity')
            OR ($3 AND next_attempt_at > clock_timestamp() + make_interval(secs => $4)
                AND next_attempt_at < 'infinity')
        )
        """,
        endpoint_id,
        enabled,
        moved,
        lease_seconds,
    )


async def expire_parked(
    conn: asyncpg.Connection, endpoint_id: uuid.UUID, older_than_seconds: float, reason: str
) -> None:
    """Fail, with `reason` as their error, the endpoint's parked deliveries queued more than
    `older_than_seconds` ago (a resume, before it makes the others due). One a pause parked
    while its attempt was under way may still be: its success is recorded over this, as
    any success is (record_attempt), its failure changes nothing more."""
    await conn.execute(
        """
        UPDATE webhook_deliveries SET status = 'failed', last_error = $3
        WHERE endpoint_id = $1 AND status = 'pending' AND next_attempt_at = 'infinity'
          AND created_at < now() - make_interval(secs => $2)
        """,
        endpoint_id,
        older_than_seconds,
        reason,
    )


async def delete_endpoint(conn: asyncpg.Connection, endpoint_id: uuid.UUID, user_id: str) -> bool:
    """Delete the user's endpoint and its deliveries; False when it is not theirs."""
    status = await conn.execute(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND user_id = $2", endpoint_id, user_id
    )
    return bool(status != "DELETE 0")


async def set_secret(
    conn: asyncpg.Connection,
    endpoint_id: uuid.UUID,
    user_id: str,
    secret: str,
    overlap_seconds: float,
) -> asyncpg.Record | None:
    """A new secret; the one it replaces still signs for `overlap_seconds`."""
    return await conn.fetchrow(
        f"""
        UPDATE webhook_endpoints
        SET previous_secret = secret,
            previous_secret_expires_at = now() + make_interval(secs => $4),
            secret = $3
        WHERE id = $1 AND user_id = $2
        RETURNING {_ENDPOINT}
        """,
        endpoint_id,
        user_id,
        secret,
        overlap_seconds,
    )


async def forget_replaced_secrets(conn: asyncpg.Connection) -> int:
    """Clear the secret a rotation replaced, and its expiry, on every endpoint whose overlap
    is over (nothing reads it since); endpoints another transaction holds are left to the
    next sweep. NO KEY: a job-end trigger's foreign-key check goes on. How many."""
    status = await conn.execute(
        """
        UPDATE webhook_endpoints SET previous_secret = NULL, previous_secret_expires_at = NULL
        WHERE id IN (
            SELECT id FROM webhook_endpoints
            WHERE previous_secret_expires_at <= now()
            FOR NO KEY UPDATE SKIP LOCKED
        )
        """
    )
    return int(status.split()[-1])


async def deliveries_for(
    conn: asyncpg.Connection,
    endpoint_id: uuid.UUID,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The endpoint's deliveries newest first, (created_at, id) descending, after `before`
    (the previous page's last), each with its attempts (oldest first) as JSON, and
    `next_try`: null while parked (asyncpg reads 'infinity' as a naive datetime.max)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT {_DELIVERY}, nullif(d.next_attempt_at, 'infinity') AS next_try,
               COALESCE((
                   SELECT jsonb_agg(jsonb_build_object(
                              'attempted_at', a.attempted_at, 'status_code', a.status_code,
                              'error', a.error, 'duration_ms', a.duration_ms)
                          ORDER BY a.attempted_at, a.id)
                   FROM webhook_attempts a WHERE a.delivery_id = d.id
               ), '[]'::jsonb) AS attempt_log
        FROM webhook_deliveries d
        WHERE d.endpoint_id = $1
          AND ($3::timestamptz IS NULL OR (d.created_at, d.id) < ($3, $4::uuid))
        ORDER BY d.created_at DESC, d.id DESC
        LIMIT $2
        """,
        endpoint_id,
        limit,
        *(before or (None, None)),
    )
    return rows


async def claim_due(
    conn: asyncpg.Connection, limit: int, lease_seconds: float
) -> list[asyncpg.Record]:
    """Lease up to `limit` due deliveries (their next attempt moves `lease_seconds` ahead, so
    a sender that dies mid-send leaves them to be retried), with what sending them needs and
    `lease_id`, this claim's, which record_attempt asks for."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        WITH due AS (
            SELECT d.id FROM webhook_deliveries d
            JOIN webhook_endpoints e ON e.id = d.endpoint_id
            WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.disabled_at IS NULL
            ORDER BY d.next_attempt_at
            LIMIT $1
            FOR UPDATE OF d SKIP LOCKED
        )
        UPDATE webhook_deliveries d
        SET next_attempt_at = now() + make_interval(secs => $2), lease_id = gen_random_uuid()
        FROM due, webhook_endpoints e
        WHERE d.id = due.id AND e.id = d.endpoint_id
        RETURNING d.id, d.lease_id, d.type, d.job_id, d.payload, d.attempts, d.created_at,
                  e.url, e.secret, e.user_id,
                  CASE WHEN e.previous_secret_expires_at > now()
                       THEN e.previous_secret END AS previous_secret
        """,
        limit,
        lease_seconds,
    )
    return rows


async def record_attempt(
    conn: asyncpg.Connection,
    delivery_id: uuid.UUID,
    lease_id: uuid.UUID,
    *,
    payload: dict[str, Any],
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    delivered: bool,
    retry_in_seconds: float | None,
) -> None:
    """Record one attempt made under the claim `lease_id`; the delivery is then delivered,
    due again in `retry_in_seconds`, or (neither) failed for good.

    The attempt is always logged. A success marks the delivery delivered whoever sent it (the
    receiver has it: nobody should send it again), also after another sender gave it up. A
    failure changes the delivery only while the claim is still this sender's: once its lease
    ran out and another sender claimed the delivery, that one's lease and outcome stand."""
    await conn.execute(
        """
        WITH attempt AS (
            INSERT INTO webhook_attempts (delivery_id, status_code, error, duration_ms)
            SELECT id, $3, $4, $5 FROM webhook_deliveries WHERE id = $1
        ),
        -- FOR SHARE waits for a pause committing meanwhile, and then reads it. Joined below
        -- (not a subquery the CASE may skip), so the endpoint is always locked before the
        -- delivery, as a PATCH locks them: a recheck evaluating it late could deadlock.
        endpoint AS (
            SELECT e.disabled_at FROM webhook_endpoints e
            JOIN webhook_deliveries d ON d.endpoint_id = e.id
            WHERE d.id = $1
            FOR SHARE OF e
        )
        UPDATE webhook_deliveries SET
            payload = COALESCE(payload, $2),
            attempts = attempts + 1,
            last_status = $3,
            last_error = $4,
            status = CASE WHEN $6 THEN 'delivered'
                          WHEN $7::float8 IS NULL THEN 'failed' ELSE 'pending' END,
            delivered_at = CASE WHEN $6 THEN now() END,
            lease_id = NULL,
            next_attempt_at = CASE
                WHEN $7::float8 IS NULL THEN next_attempt_at
                -- paused while this attempt was under way: parked until it is resumed
                WHEN endpoint.disabled_at IS NOT NULL THEN 'infinity'
                ELSE now() + make_interval(secs => $7) END
        FROM endpoint
        WHERE id = $1 AND CASE WHEN $6 THEN status IN ('pending', 'failed')
                               ELSE status = 'pending' AND lease_id = $8 END
        """,
        delivery_id,
        payload,
        status_code,
        error,
        duration_ms,
        delivered,
        retry_in_seconds,
        lease_id,
    )
