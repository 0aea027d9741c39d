"""The `users` table (shared with the mobile app)."""

from __future__ import annotations

from enum import IntEnum

import asyncpg

_COLUMNS = "id, email, credits, created_at, updated_at, last_login_at, erased_at"


class Adding(IntEnum):
    """The first keys of the transaction-scoped advisory locks that serialise one user's
    additions to a set of rows with a cap (the second key is the hash of the user's id)."""

    WEBHOOK_ENDPOINT = 0x5EB400C
    API_KEY = 0x0A91CE7


async def lock_additions(conn: asyncpg.Connection, kind: Adding, user_id: str) -> None:
    """Wait for the user's other additions of this `kind` in flight, until this transaction
    ends: a conditional insert's count is then read after theirs committed."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", kind, user_id)


async def get(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)


async def create_with_signup(
    conn: asyncpg.Connection, user_id: str, email: str, credits: int
) -> asyncpg.Record | None:
    """Insert the user and its `signup` ledger entry in one statement.

    Returns None when the row already exists (another request won the race) or the
    email belongs to another user; the caller reads the row again to tell which.
    """
    return await conn.fetchrow(
        f"""
        WITH new_user AS (
            INSERT INTO users (id, email, credits, last_login_at)
            VALUES ($1, $2, $3, now())
            ON CONFLICT DO NOTHING
            RETURNING {_COLUMNS}
        ), signup AS (
            INSERT INTO credit_ledger (user_id, delta, reason, balance_after)
            SELECT id, credits, 'signup', credits FROM new_user
        )
        SELECT {_COLUMNS} FROM new_user
        """,
        user_id,
        email,
        credits,
    )


async def touch_login(conn: asyncpg.Connection, user_id: str, min_interval_seconds: int) -> None:
    """Stamp last_login_at, at most once per interval. A row the mobile app left below zero
    (kept by the NOT VALID check from before the service) is not touched: any update of it
    would violate the check."""
    await conn.execute(
        """
        UPDATE users SET last_login_at = now()
        WHERE id = $1
          AND credits >= 0
          AND erased_at IS NULL
          AND (last_login_at IS NULL OR last_login_at < now() - make_interval(secs => $2))
        """,
        user_id,
        float(min_interval_seconds),
    )


async def lock(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    """Lock the user's row against every write that names the user (FOR UPDATE also waits
    for, and holds off, the foreign-key checks of rows being added for them)."""
    return await conn.fetchrow(
        "SELECT id, credits, erased_at FROM users WHERE id = $1 FOR UPDATE", user_id
    )


async def hold(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    """The user's row, held against an erasure (which takes `lock`) until the caller's
    transaction ends, as a write to the row would hold it; waits for an erasure under way,
    then reads what it committed."""
    return await conn.fetchrow(
        "SELECT id, erased_at FROM users WHERE id = $1 FOR NO KEY UPDATE", user_id
    )


async def insert_tombstone(conn: asyncpg.Connection, user_id: str, email: str) -> bool:
    """Take the id for an erased user who has no row yet; False when a row exists."""
    status = await conn.execute(
        """
        INSERT INTO users (id, email, credits, erased_at) VALUES ($1, $2, 0, now())
        ON CONFLICT DO NOTHING
        """,
        user_id,
        email,
    )
    return bool(status == "INSERT 0 1")


async def mark_erased(conn: asyncpg.Connection, user_id: str, email: str) -> None:
    """Turn the row into a tombstone: no email, no login time, erased now. A balance the
    mobile app left below zero (kept by the NOT VALID check, and never opened in the
    ledger) becomes 0: any update of the row must satisfy the check."""
    await conn.execute(
        """
        UPDATE users
        SET email = $2, last_login_at = NULL, erased_at = now(), credits = GREATEST(credits, 0)
        WHERE id = $1 AND erased_at IS NULL
        """,
        user_id,
        email,
    )


async def set_email(conn: asyncpg.Connection, user_id: str, email: str) -> asyncpg.Record | None:
    """Set a live user's email; None when there is no such user (or it was erased)."""
    return await conn.fetchrow(
        f"""
        UPDATE users SET email = $2 WHERE id = $1 AND erased_at IS NULL
        RETURNING {_COLUMNS}
        """,
        user_id,
        email,
    )


async def get_profile(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        SELECT u.id, u.email, u.credits, u.created_at,
               s.status AS subscription_status, s.price_id AS subscription_price_id,
               s.current_period_end AS subscription_current_period_end,
               s.stripe_status AS subscription_stripe_status,
               s.cancel_at_period_end AS subscription_cancel_at_period_end
        FROM users u
        LEFT JOIN subscriptions s ON s.user_id = u.id
        WHERE u.id = $1
        """,
        user_id,
    )
