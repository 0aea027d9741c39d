"""The caller's profile: balance and subscription."""

from __future__ import annotations

import asyncpg

from app.db import users as users_db
from app.errors import NotFound
from app.schemas.me import Me, Subscription
from app.services.users import User


def subscription_of(profile: asyncpg.Record) -> Subscription | None:
    """The subscription as the app reads it, from a `users_db.get_profile` row."""
    if profile["subscription_status"] is None:
        return None
    return Subscription(
        status=profile["subscription_status"],
        price_id=profile["subscription_price_id"],
        current_period_end=profile["subscription_current_period_end"],
        stripe_status=profile["subscription_stripe_status"],
        cancel_at_period_end=profile["subscription_cancel_at_period_end"],
    )


async def me(conn: asyncpg.Connection, user: User) -> Me:
    row = await users_db.get_profile(conn, user.id)
    if row is None:  # deleted between authentication and now
        raise NotFound("No such user.")
    subscription = subscription_of(row)
    return Me(
        id=row["id"],
        email=row["email"],
        credits=row["credits"],
        created_at=row["created_at"],
        subscription=subscription,
    )
