"""The `webhook_events` table: incoming webhook events, stored once, processed once."""

from __future__ import annotations

from typing import Any

import asyncpg

_COLUMNS = "provider, event_id, type, payload, received_at, processed_at, error, attempts"


async def insert(
    conn: asyncpg.Connection, provider: str, event_id: str, type_: str, payload: dict[str, Any]
) -> asyncpg.Record:
    """Store the event unless it is there already; returns (inserted, processed_at).

    The row already there is read by a statement of its own: when another request stores the
    same event at the same moment, ON CONFLICT waits for it to commit, but the snapshot of a
    statement that began before then cannot see the row it committed; the next statement's
    can (READ COMMITTED). Rows are never deleted (retention only blanks their payload).
    """
    row = await conn.fetchrow(
        """
        INSERT INTO webhook_events (provider, event_id, type, payload)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT DO NOTHING
        RETURNING true AS inserted, processed_at
        """,
        provider,
        event_id,
        type_,
        payload,
    )
    row = row or await conn.fetchrow(
        "SELECT false AS inserted, processed_at FROM webhook_events"
        " WHERE provider = $1 AND event_id = $2",
        provider,
        event_id,
    )
    assert row is not None
    return row


async def lock(conn: asyncpg.Connection, provider: str, event_id: str) -> asyncpg.Record | None:
    """The event, locked until the end of the caller's transaction."""
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM webhook_events WHERE provider = $1 AND event_id = $2 FOR UPDATE",
        provider,
        event_id,
    )


async def get(conn: asyncpg.Connection, provider: str, event_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM webhook_events WHERE provider = $1 AND event_id = $2",
        provider,
        event_id,
    )


async def mark_processed(conn: asyncpg.Connection, provider: str, event_id: str) -> None:
    await conn.execute(
        """
        UPDATE webhook_events
        SET processed_at = now(), error = NULL, attempts = attempts + 1
        WHERE provider = $1 AND event_id = $2
        """,
        provider,
        event_id,
    )


async def mark_failed(conn: asyncpg.Connection, provider: str, event_id: str, error: str) -> None:
    """Keep the failure on an event that is still unprocessed (a concurrent delivery may have
    applied it meanwhile: then there is nothing to keep)."""
    await conn.execute(
        """
        UPDATE webhook_events SET error = $3, attempts = attempts + 1
        WHERE provider = $1 AND event_id = $2 AND processed_at IS NULL
        """,
        provider,
        event_id,
        error,
    )


async def unprocessed(
    conn: asyncpg.Connection, provider: str | None, event_id: str | None, limit: int
) -> list[asyncpg.Record]:
    """Events that did not complete, oldest first, optionally of one provider or one id."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM webhook_events
        WHERE processed_at IS NULL
          AND ($1::text IS NULL OR provider = $1)
          AND ($2::text IS NULL OR event_id = $2)
        ORDER BY received_at, event_id
        LIMIT $3
        """,
        provider,
        event_id,
        limit,
    )
    return rows


# What an event about an erased account keeps of its payload.
_ERASED = """'{"erased": true}'::jsonb"""
# What a processed event keeps of its payload once WEBHOOK_EVENT_PAYLOAD_DAYS have passed.
_EXPIRED = """'{"expired": true}'::jsonb"""


async def expire_payloads(conn: asyncpg.Connection, days: int, limit: int) -> int:
    """Keep only `{"expired": true}` of up to `limit` events processed more than `days`
    ago, oldest first: their id still turns a redelivery away, what they said (emails,
    names, addresses) goes. Rows another sweep holds are skipped. The rows are picked first
    (by the partial index on processed_at) and then changed by their ctid, which their lock
    keeps, so no plan reads the whole table. How many."""
    status = await conn.execute(
        f"""
        UPDATE webhook_events SET payload = {_EXPIRED}
        WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM webhook_events
            WHERE processed_at < now() - make_interval(days => $1)
              AND payload <> {_EXPIRED} AND payload <> {_ERASED}
            ORDER BY processed_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ))
        """,
        days,
        limit,
    )
    return int(status.split()[-1])


async def scrub(conn: asyncpg.Connection, provider: str, event_id: str) -> None:
    """Keep only `{"erased": true}` of the event (it is about an erased account)."""
    await conn.execute(
        f"UPDATE webhook_events SET payload = {_ERASED} WHERE provider = $1 AND event_id = $2",
        provider,
        event_id,
    )


async def scrub_about_user(conn: asyncpg.Connection, user_id: str, customer: str | None) -> int:
    """Keep only `{"erased": true}` of the stored events about an erased user (Clerk's, by
    the id in their data; Stripe's, by the user's `customer`, the customer's own events
    included), and count them as processed: what they said about the user (emails, names,
    addresses) goes, and nothing is left to replay for an account that no longer exists.
    Clerk's `user.deleted` names only the id. How many; run it after the erasure's commit
    (see accounts.erase)."""
    status = await conn.execute(
        f"""
        UPDATE webhook_events
        SET payload = {_ERASED}, processed_at = COALESCE(processed_at, now()), error = NULL
        WHERE (provider = 'clerk' AND payload #>> '{{data,id}}' = $1 AND type <> 'user.deleted')
           OR (provider = 'stripe' AND payload #>> '{{data,object,customer}}' = $2)
           OR (provider = 'stripe' AND payload #>> '{{data,object,id}}' = $2)
        """,
        user_id,
        customer,
    )
    return int(status.split()[-1])
