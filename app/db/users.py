"""The `users` table (shared with the mobile app)."""

from __future__ import annotations

import asyncpg

_COLUMNS = "id, email, credits, created_at, updated_at, last_login_at"


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
          AND (last_login_at IS NULL OR last_login_at < now() - make_interval(secs => $2))
        """,
        user_id,
        float(min_interval_seconds),
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
