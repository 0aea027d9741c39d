"""The caller's profile: balance and subscription."""

from __future__ import annotations

import asyncpg

from app.db import users as users_db
from app.errors import NotFound
from app.schemas.me import Me, Subscription
from app.services.users import User


async def me(conn: asyncpg.Connection, user: User) -> Me:
    row = await users_db.get_profile(conn, user.id)
    if row is None:  # deleted between authentication and now
        raise NotFound("No such user.")
    subscription = None
    if row["subscription_status"] is not None:
        subscription = Subscription(
            status=row["subscription_status"],
            price_id=row["subscription_price_id"],
            current_period_end=row["subscription_current_period_end"],
            stripe_status=row["subscription_stripe_status"],
            cancel_at_period_end=row["subscription_cancel_at_period_end"],
        )
    return Me(
        id=row["id"],
        email=row["email"],
        credits=row["credits"],
        created_at=row["created_at"],
        subscription=subscription,
    )
