"""The `credit_ledger` table, and the statements that move a balance together with it.

Each balance change is ONE statement: the users row and its ledger row change together or
not at all, and the unique indexes on the ledger make duplicates impossible (not unlikely).
A debit is written with its job, by `app.db.jobs.create_with_debit`.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from app.db.where import Where

_COLUMNS = "id, user_id, delta, reason, job_id, source_id, balance_after, note, created_at"


async def refund(conn: asyncpg.Connection, job_id: UUID) -> asyncpg.Record | None:
    """Give back what the job's debit took, once: a second call finds the refund and does nothing.

    Returns (user_id, delta, balance_after) of the refund made now, or None.
    """
    return await conn.fetchrow(
        """
        WITH debit AS (
            SELECT user_id, -delta AS amount FROM credit_ledger
            WHERE job_id = $1 AND delta < 0
        ), locked AS (
            SELECT users.id, users.credits FROM users JOIN debit ON users.id = debit.user_id
            FOR UPDATE OF users
        ), entry AS (
            INSERT INTO credit_ledger (user_id, delta, reason, job_id, balance_after)
            SELECT locked.id, debit.amount, 'refund', $1, locked.credits + debit.amount
            FROM locked, debit
            ON CONFLICT DO NOTHING
            RETURNING user_id, delta, balance_after
        ), credit AS (
            UPDATE users SET credits = users.credits + entry.delta
            FROM entry WHERE users.id = entry.user_id
        )
        SELECT user_id, delta, balance_after FROM entry
        """,
        job_id,
    )


async def grant(
    conn: asyncpg.Connection,
    user_id: str,
    delta: int,
    reason: str,
    source_id: str,
    note: str | None = None,
) -> asyncpg.Record:
    """Apply `delta` once per `source_id` (a Stripe event, an invoice, an admin request id).

    Returns (balance_after, balance): balance_after is NULL when nothing was applied, either
    because `source_id` was used before or because the result would be negative; balance
    (before the change) is NULL when the user does not exist or was erased.
    """
    row = await conn.fetchrow(
        """
        WITH locked AS (
            SELECT id, credits FROM users WHERE id = $1 AND erased_at IS NULL FOR UPDATE
        ), entry AS (
            INSERT INTO credit_ledger (user_id, delta, reason, source_id, balance_after, note)
            SELECT id, $2, $3, $4, credits + $2, $5 FROM locked WHERE credits + $2 >= 0
            ON CONFLICT DO NOTHING
            RETURNING delta, balance_after
        ), credit AS (
            UPDATE users SET credits = users.credits + entry.delta FROM entry WHERE users.id = $1
        )
        SELECT (SELECT balance_after FROM entry) AS balance_after,
               (SELECT credits FROM locked) AS balance
        """,
        user_id,
        delta,
        reason,
        source_id,
        note,
    )
    assert row is not None
    return row


async def source_used(conn: asyncpg.Connection, source_id: str) -> bool:
    """Whether a ledger row was written for `source_id`."""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM credit_ledger WHERE source_id = $1)", source_id
    )
    return bool(found)


async def by_source(conn: asyncpg.Connection, source_id: str) -> asyncpg.Record | None:
    """The ledger row written for `source_id`, if any."""
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM credit_ledger WHERE source_id = $1", source_id
    )


async def open_balance(conn: asyncpg.Connection, user_id: str) -> None:
    """Record the balance of a user the service has not seen before as its opening balance.

    The row is locked by a statement of its own first: a statement that waited for the lock
    still reads the ledger as it was when it began, so one that locked and looked at once
    would miss the rows of the grant it waited for. For a legacy negative balance (never
    opened: balance_after cannot be negative) that grant leaves no opening row for the
    unique index to refuse a second one with, and an opening row would be written after it.
    Nothing is written when no row was locked: one the mobile app commits in between would
    be opened unlocked, racing its own spend's trigger for the one opening row.
    """
    async with conn.transaction():
        locked = await conn.fetchval(
            "SELECT true FROM users WHERE id = $1 AND erased_at IS NULL FOR UPDATE", user_id
        )
        if locked is None:
            return
        await conn.execute(
            """
            INSERT INTO credit_ledger (user_id, delta, reason, balance_after)
            SELECT id, credits, 'opening_balance', credits FROM users
            WHERE id = $1 AND erased_at IS NULL AND credits >= 0
              AND NOT EXISTS (SELECT 1 FROM credit_ledger WHERE user_id = $1)
            ON CONFLICT DO NOTHING
            """,
            user_id,
        )


async def page(
    conn: asyncpg.Connection, user_id: str, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    # With a cursor, it seeks to it in (user_id, id DESC) (`Where`).
    where = Where(user_id, limit)
    where.add("user_id = $1")
    if before_id is not None:
        where.add("id < {}", before_id)
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM credit_ledger
        WHERE {where}
        ORDER BY id DESC
        LIMIT $2
        """,
        *where.args,
    )
    return rows


async def mismatches(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Users whose balance the ledger does not explain (sum of deltas or last balance_after)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT u.id, u.credits, s.total, s.last_balance
        FROM users u
        JOIN (
            SELECT user_id, sum(delta) AS total,
                   (array_agg(balance_after ORDER BY id DESC))[1] AS last_balance
            FROM credit_ledger GROUP BY user_id
        ) s ON s.user_id = u.id
        WHERE u.credits <> s.total OR u.credits <> s.last_balance
        ORDER BY u.id
        """
    )
    return rows


async def count_unopened(conn: asyncpg.Connection) -> int:
    """Users with no ledger entry yet (created outside the service and not seen by it since);
    the tombstone of an id erased before it ever had a balance is not one of them."""
    value = await conn.fetchval(
        """
        SELECT count(*) FROM users u
        WHERE u.erased_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM credit_ledger l WHERE l.user_id = u.id)
        """
    )
    return int(value)


async def reverse_purchase(
    conn: asyncpg.Connection, purchase_source_id: str, source_id: str, note: str
) -> asyncpg.Record | None:
    """Take back what the purchase recorded under `purchase_source_id` added, down to a zero
    balance at most, once per `source_id` (a taken-back nothing is recorded too).

    Returns (user_id, delta, balance_after, purchased) of the entry made now, or None: no
    such purchase, or `source_id` was used before.
    """
    return await conn.fetchrow(
        """
        WITH purchase AS (
            SELECT user_id, delta FROM credit_ledger
            WHERE source_id = $1 AND reason = 'purchase'
        ), locked AS (
            SELECT users.id, users.credits FROM users JOIN purchase ON users.id = purchase.user_id
            FOR UPDATE OF users
        ), entry AS (
            INSERT INTO credit_ledger (user_id, delta, reason, source_id, balance_after, note)
            SELECT locked.id, -LEAST(purchase.delta, locked.credits), 'purchase_reversal', $2,
                   locked.credits - LEAST(purchase.delta, locked.credits),
                   format('%s: took back %s of the %s credits bought', $3::text,
                          LEAST(purchase.delta, locked.credits), purchase.delta)
            FROM locked, purchase
            ON CONFLICT DO NOTHING
            RETURNING user_id, delta, balance_after
        ), debit AS (
            UPDATE users SET credits = users.credits + entry.delta
            FROM entry WHERE users.id = entry.user_id AND entry.delta <> 0
        )
        SELECT entry.user_id, entry.delta, entry.balance_after, purchase.delta AS purchased
        FROM entry, purchase
        """,
        purchase_source_id,
        source_id,
        note,
    )
