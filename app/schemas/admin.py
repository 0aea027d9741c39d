from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from app.schemas.common import TextStr
from app.schemas.generations import JOB_EXAMPLE, Job
from app.schemas.me import LEDGER_ENTRY_EXAMPLE, ME_EXAMPLE, LedgerEntry, Subscription

MAX_ADJUSTMENT = 1_000_000


def _a_json_number(value: object) -> object:
    """JSON Schema's integer is a number with no fraction (5 and 5.0), never true or "5",
    which lax pydantic would read as credits too."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number, not a string or a boolean")
    return value


def _nonzero(value: int) -> int:
    if value == 0:
        raise ValueError("must not be 0: an adjustment of nothing changes nothing")
    return value


class CreditAdjustment(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"delta": 10, "reason": "refund for ticket #123"}]},
    )

    delta: Annotated[
        int, Field(ge=-MAX_ADJUSTMENT, le=MAX_ADJUSTMENT), BeforeValidator(_a_json_number)
    ] = Field(
        description="Credits to add (positive) or take (negative); never 0. The balance "
        "never goes below zero (409 with the balance).",
        json_schema_extra={"not": {"const": 0}},  # what _nonzero refuses
    )
    reason: Annotated[TextStr, Field(min_length=1, max_length=500)] = Field(
        description="Why: kept as the ledger row's note."
    )

    _check_delta = field_validator("delta")(_nonzero)


class CreditAdjustmentResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"user_id": "user_2abcDEF", "delta": 10, "balance": 14, "applied": True}]
        }
    )

    user_id: str
    delta: int
    balance: int = Field(description="The balance after the adjustment.")
    applied: bool = Field(
        description="False when this Idempotency-Key was applied before: nothing changed now."
    )


class AdminUser(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **ME_EXAMPLE,
                    "last_login_at": "2026-05-04T09:11:58.730Z",
                    "erased_at": None,
                    "ledger": [LEDGER_ENTRY_EXAMPLE],
                    "jobs": [JOB_EXAMPLE],
                }
            ]
        }
    )

    id: str
    email: str
    credits: int
    created_at: datetime
    last_login_at: datetime | None
    erased_at: datetime | None = Field(description="Set once the account was erased.")
    subscription: Subscription | None
    ledger: list[LedgerEntry] = Field(description="The newest ledger rows, newest first.")
    jobs: list[Job] = Field(description="The newest jobs the service made, newest first.")


class UserStats(BaseModel):
    total: int = Field(description="Users now (erased accounts not counted).")
    signups: int = Field(description="Users created in the window.")
    erased: int = Field(description="Accounts erased in the window.")


class JobCount(BaseModel):
    status: str
    model: str | None
    count: int


class JobStats(BaseModel):
    total: int
    by_status: dict[str, int]
    by_model: dict[str, int] = Field(description="Keyed by model; `none`: no model answered.")
    by_status_and_model: list[JobCount]


class CreditStats(BaseModel):
    spent: int = Field(description="Debited for jobs, less what was refunded.")
    refunded: int
    sold: int = Field(description="Purchases and subscription grants.")
    admin_net: int = Field(description="Administrators' adjustments, net.")


class Stats(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "since": "2026-04-27T09:00:00Z",
                    "until": "2026-05-04T09:00:00Z",
                    "users": {"total": 1840, "signups": 112, "erased": 3},
                    "jobs": {
                        "total": 5230,
                        "by_status": {
                            "completed": 5012,
                            "failed": 171,
                            "running": 31,
                            "pending": 16,
                        },
                        "by_model": {
                            "gemini-3.1-flash-image": 4890,
                            "fal-ai/flux/dev": 293,
                            "none": 47,
                        },
                        "by_status_and_model": [
                            {
                                "status": "completed",
                                "model": "gemini-3.1-flash-image",
                                "count": 4731,
                            },
                            {"status": "failed", "model": None, "count": 47},
                        ],
                    },
                    "credits": {"spent": 5059, "refunded": 171, "sold": 9200, "admin_net": 40},
                    "failure_rate": 0.0330,
                    "refund_rate": 0.0327,
                }
            ]
        }
    )

    since: datetime
    until: datetime
    users: UserStats
    jobs: JobStats
    credits: CreditStats
    failure_rate: float | None = Field(
        description="Failed jobs over finished (completed + failed) jobs; null when none."
    )
    refund_rate: float | None = Field(
        description="Refunds over debits in the window; null when there were no debits."
    )
