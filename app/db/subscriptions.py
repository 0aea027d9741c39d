"""The `subscriptions` table (shared with the mobile app): one row per user."""

from __future__ import annotations

from datetime import datetime

import asyncpg

_COLUMNS = (
    "id, user_id, status, stripe_customer_id, stripe_subscription_id, price_id, "
    "current_period_end, stripe_status, cancel_at_period_end, stripe_event_at"
)


async def get_for_user(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM subscriptions WHERE user_id = $1", user_id)


async def set_customer(conn: asyncpg.Connection, user_id: str, customer_id: str) -> str | None:
    """Record the user's Stripe customer unless one is recorded already; returns the one kept
    (None when the user no longer exists)."""
    found = await conn.fetchval(
        """
        INSERT INTO subscriptions (user_id, stripe_customer_id)
        SELECT id, $2 FROM users WHERE id = $1
        ON CONFLICT (user_id) DO UPDATE
            SET stripe_customer_id = COALESCE(subscriptions.stripe_customer_id,
                                              EXCLUDED.stripe_customer_id),
                updated_at = CASE WHEN subscriptions.stripe_customer_id IS NULL
                                  THEN now() ELSE subscriptions.updated_at END
        RETURNING stripe_customer_id
        """,
        user_id,
        customer_id,
    )
    return None if found is None else str(found)


async def user_for_customer(conn: asyncpg.Connection, customer_id: str) -> str | None:
    found = await conn.fetchval(
        """
        SELECT user_id FROM subscriptions WHERE stripe_customer_id = $1
        ORDER BY created_at NULLS LAST LIMIT 1
        """,
        customer_id,
    )
    return None if found is None else str(found)


async def apply_stripe_state(
    conn: asyncpg.Connection,
    user_id: str,
    *,
    customer_id: str,
    subscription_id: str,
    status: str,
    stripe_status: str,
    price_id: str | None,
    current_period_end: datetime | None,
    cancel_at_period_end: bool,
    event_at: datetime,
) -> bool:
    """Write what Stripe says about the user's subscription, unless the row holds what a newer
    event said, or holds another subscription that is active while this one is not (the end
    of an old subscription must not turn off a new one). Returns whether it was written."""
    written = await conn.fetchval(
        """
        INSERT INTO subscriptions AS s (
            user_id, status, stripe_customer_id, stripe_subscription_id, price_id,
            current_period_end, stripe_status, cancel_at_period_end, stripe_event_at)
        SELECT id, $2, $3, $4, $5, $6, $7, $8, $9 FROM users WHERE id = $1
        ON CONFLICT (user_id) DO UPDATE
            SET status = EXCLUDED.status,
                stripe_customer_id = COALESCE(s.stripe_customer_id, EXCLUDED.stripe_customer_id),
                stripe_subscription_id = EXCLUDED.stripe_subscription_id,
                price_id = EXCLUDED.price_id,
                current_period_end = EXCLUDED.current_period_end,
                stripe_status = EXCLUDED.stripe_status,
                cancel_at_period_end = EXCLUDED.cancel_at_period_end,
                stripe_event_at = EXCLUDED.stripe_event_at,
                updated_at = now()
            WHERE (s.stripe_event_at IS NULL OR s.stripe_event_at <= EXCLUDED.stripe_event_at)
              AND (s.stripe_subscription_id IS NULL
                   OR s.stripe_subscription_id = EXCLUDED.stripe_subscription_id
                   OR EXCLUDED.status = 'Pro'
                   OR s.status <> 'Pro')
        RETURNING true
        """,
        user_id,
        status,
        customer_id,
        subscription_id,
        price_id,
        current_period_end,
        stripe_status,
        cancel_at_period_end,
        event_at,
    )
    return bool(written)
