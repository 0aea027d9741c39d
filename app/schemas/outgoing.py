"""Outgoing webhooks: endpoints an integrator registers, and what was sent to them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import SafeStr

EventType = Literal["job.completed", "job.failed"]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://example.com/hooks", "events": ["job.completed"]}]
        },
    )

    url: Annotated[SafeStr, Field(min_length=1, max_length=2000)] = Field(
        description="An https URL on a public address; each delivery is a POST to it."
    )
    events: list[EventType] = Field(
        min_length=1, max_length=2, description="The events to send: job.completed, job.failed."
    )


class WebhookEndpoint(BaseModel):
    id: UUID
    url: str
    events: list[str]
    created_at: datetime


class WebhookEndpointWithSecret(WebhookEndpoint):
    secret: str = Field(
        description="`whsec_…`: verifies each delivery's `webhook-signature` (Standard "
        "Webhooks). Shown when the endpoint is made and when the secret is rotated."
    )


class WebhookEndpointList(BaseModel):
    items: list[WebhookEndpoint]


class WebhookAttempt(BaseModel):
    attempted_at: datetime
    status_code: int | None = Field(description="The endpoint's answer; null if none came.")
    error: str | None
    duration_ms: int


class WebhookDelivery(BaseModel):
    id: UUID = Field(description="The message id, sent as `webhook-id` on every attempt.")
    type: str
    job_id: UUID
    status: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttempt]
    next_attempt_at: datetime | None = Field(description="When pending: the next try.")
    delivered_at: datetime | None
    created_at: datetime


class WebhookDeliveryList(BaseModel):
    items: list[WebhookDelivery]
