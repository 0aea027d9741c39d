from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import Page
from app.schemas.generations import JOB_ID_EXAMPLE

SUBSCRIPTION_EXAMPLE: dict[str, Any] = {
    "status": "Pro",
    "price_id": "price_1PqRsT2eZvKYlo2C8pro",
    "current_period_end": "2026-06-01T00:00:00Z",
    "stripe_status": "active",
    "cancel_at_period_end": False,
}
LEDGER_ENTRY_EXAMPLE: dict[str, Any] = {
    "id": 1042,
    "delta": -1,
    "reason": "generate",
    "job_id": JOB_ID_EXAMPLE,
    "source_id": None,
    "balance_after": 4,
    "note": None,
    "created_at": "2026-05-04T09:12:03.418Z",
}
LEDGER_PAGE_CURSOR_EXAMPLE = "eyJpZCI6MTAwMX0"  # pagination.encode_id(1001): the last row's id
SIGNUP_ENTRY_EXAMPLE: dict[str, Any] = {
    "id": 1001,
    "delta": 5,
    "reason": "signup",
    "job_id": None,
    "source_id": None,
    "balance_after": 5,
    "note": None,
    "created_at": "2026-05-01T08:00:12.051Z",
}


class Subscription(BaseModel):
    """The shared `subscriptions` row as the mobile app reads it, and Stripe's own words."""

    model_config = ConfigDict(json_schema_extra={"examples": [SUBSCRIPTION_EXAMPLE]})

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


ME_EXAMPLE: dict[str, Any] = {
    "id": "user_2abcDEF",
    "email": "ada@example.com",
    "credits": 4,
    "created_at": "2026-05-01T08:00:12.051Z",
    "subscription": SUBSCRIPTION_EXAMPLE,
}


class Me(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ME_EXAMPLE]})

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
    model_config = ConfigDict(json_schema_extra={"examples": [LEDGER_ENTRY_EXAMPLE]})

    id: int
    delta: int = Field(description="Credits added (positive) or taken (negative).")
    reason: LedgerReason = Field(examples=["generate"])
    job_id: UUID | None
    source_id: str | None
    balance_after: int
    note: str | None
    created_at: datetime


class LedgerPage(Page):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [LEDGER_ENTRY_EXAMPLE, SIGNUP_ENTRY_EXAMPLE],
                    "next_cursor": LEDGER_PAGE_CURSOR_EXAMPLE,
                }
            ]
        }
    )

    items: list[LedgerEntry]
