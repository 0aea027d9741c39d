from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from app.schemas.common import Page


class Subscription(BaseModel):
    """The shared `subscriptions` row as the mobile app reads it, and Stripe's own words."""

    status: str = Field(
        examples=["Pro"], description="`Pro` while Stripe says active or trialing, else `Free`."
    )
    price_id: str | None
    current_period_end: datetime | None
    stripe_status: str | None = Field(
        examples=["active"],
        description="The subscription's status at Stripe (active, trialing, past_due, "
        "canceled, …); null when Stripe has not told about one.",
    )
    cancel_at_period_end: bool = Field(
        description="Stripe ends the plan at current_period_end (cancelled, still paid up)."
    )


class Me(BaseModel):
    id: str = Field(examples=["user_2abcDEF"])
    email: str = Field(examples=["ada@example.com"])
    credits: int = Field(examples=[5])
    created_at: datetime
    subscription: Subscription | None = Field(
        description="The subscriptions row (made by the app, or at the first checkout), "
        "or null for a user who has neither."
    )


# credit_ledger_reason_check (migration 20261130001100_billing) allows exactly these.
LedgerReason = Literal[
    "signup",
    "opening_balance",
    "generate",
    "style",
    "edit",
    "refund",
    "purchase",
    "subscription_grant",
    "admin",
    "app_spend",
    "purchase_reversal",
]


class LedgerEntry(BaseModel):
    id: int
    delta: int = Field(description="Credits added (positive) or taken (negative).")
    reason: LedgerReason = Field(examples=["generate"])
    job_id: UUID | None
    source_id: str | None
    balance_after: int
    note: str | None
    created_at: datetime


class LedgerPage(Page):
    items: list[LedgerEntry]
