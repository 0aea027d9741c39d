"""Usage statistics over a window, for administrators: read-only aggregates."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def users(conn: asyncpg.Connection, since: datetime) -> asyncpg.Record:
    """Live users in all, users created since `since` (erased ones included: they signed
    up), and ids erased since then."""
    row = await conn.fetchrow(
        """
        SELECT count(*) FILTER (WHERE erased_at IS NULL) AS total,
               count(*) FILTER (WHERE created_at >= $1) AS signups,
               count(*) FILTER (WHERE erased_at >= $1) AS erased
        FROM users
        """,
        since,
    )
    assert row is not None
    return row


async def jobs_by_status_and_model(
    conn: asyncpg.Connection, since: datetime
) -> list[asyncpg.Record]:
    """Jobs created since `since`, counted by (status, model); model NULL for jobs that never
    reached a provider (and for jobs the mobile app made)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT status, model, count(*) AS count
        FROM image_generation_jobs
        WHERE created_at >= $1
        GROUP BY status, model
        ORDER BY status, model NULLS FIRST
        """,
        since,
    )
    return rows


async def credits(conn: asyncpg.Connection, since: datetime) -> asyncpg.Record:
    """Credits moved since `since`: spent on jobs (debits less refunds), refunded, sold
    (purchases and subscription grants), granted by administrators; debits and refunds
    counted."""
    row = await conn.fetchrow(
        """
        SELECT
            COALESCE(sum(-delta) FILTER (WHERE reason IN ('generate', 'style', 'edit')), 0)
                AS debited,
            COALESCE(sum(delta) FILTER (WHERE reason = 'refund'), 0) AS refunded,
            COALESCE(sum(delta) FILTER (WHERE reason IN ('purchase', 'subscription_grant')), 0)
                AS sold,
            COALESCE(sum(delta) FILTER (WHERE reason = 'admin'), 0) AS admin_net,
            count(*) FILTER (WHERE reason IN ('generate', 'style', 'edit')) AS debits,
            count(*) FILTER (WHERE reason = 'refund') AS refunds
        FROM credit_ledger
        WHERE created_at >= $1
        """,
        since,
    )
    assert row is not None
    return row
