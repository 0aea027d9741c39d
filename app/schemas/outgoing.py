"""Outgoing webhooks: endpoints an integrator registers, and what was sent to them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.schemas.common import Page, SafeStr, never_null
from app.schemas.generations import FAILED_JOB_EXAMPLE, JOB_EXAMPLE, JOB_ID_EXAMPLE, Job

EventType = Literal["job.completed", "job.failed"]


ENDPOINT_EXAMPLE: dict[str, Any] = {
    "id": "7a9c1e3b-5d7f-4a1c-8e3b-6d9f2a4c7e1b",
    "url": "https://example.com/hooks",
    "events": ["job.completed", "job.failed"],
    "created_at": "2026-05-03T14:25:40.019Z",
    "previous_secret_expires_at": None,
    "disabled_at": None,
}
SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw2kpgMvTuDE0="
DELIVERY_EXAMPLE: dict[str, Any] = {
    "id": "e1f3a5c7-9b2d-4f6a-8c0e-3b5d7f9a1c4e",
    "type": "job.completed",
    "job_id": JOB_ID_EXAMPLE,
    "status": "delivered",
    "attempts": [
        {
            "attempted_at": "2026-05-04T09:12:12.310Z",
            "status_code": 503,
            "error": "The endpoint answered 503.",
            "duration_ms": 212,
        },
        {
            "attempted_at": "2026-05-04T09:12:17.488Z",
            "status_code": 200,
            "error": None,
            "duration_ms": 87,
        },
    ],
    "next_attempt_at": None,
    "error": None,
    "delivered_at": "2026-05-04T09:12:17.575Z",
    "created_at": "2026-05-04T09:12:11.902Z",
}


URL_DESCRIPTION = (
    "An https URL on a public address; each delivery is a POST to it. In development "
    "(`ENV=development`, the service's default), a host that resolves only to loopback is "
    "accepted too, over http or https."
)
EVENTS_DESCRIPTION = "The events to send: job.completed, job.failed."
Url = Annotated[SafeStr, Field(min_length=1, max_length=2000)]
Events = Annotated[list[EventType], Field(min_length=1, max_length=2)]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://example.com/hooks", "events": ["job.completed"]}]
        },
    )

    url: Url = Field(description=URL_DESCRIPTION)
    events: Events = Field(description=EVENTS_DESCRIPTION)


class WebhookEndpointUpdate(BaseModel):
    """Only the fields sent change; none can be sent as null (a 422)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"events": ["job.completed", "job.failed"]}]},
    )

    url: Url | None = Field(
        default=None,
        json_schema_extra=never_null,
        description=URL_DESCRIPTION + " Pending deliveries go to the new URL from their next "
        "attempt on.",
    )
    events: Events | None = Field(
        default=None,
        json_schema_extra=never_null,
        description=EVENTS_DESCRIPTION + " For jobs that end from now on.",
    )
    enabled: StrictBool | None = Field(  # "false" or 0 is not a JSON boolean
        default=None,
        json_schema_extra=never_null,
        description="false pauses the endpoint: nothing is queued for it, and its pending "
        "deliveries wait; true resumes it, and they are sent, but for those older than the "
        "retry schedule lasts (about 23 h since their job ended): they are `failed`.",
    )


class WebhookEndpoint(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ENDPOINT_EXAMPLE]})

    id: UUID
    url: str
    events: list[str]
    created_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="After a rotation, until when the replaced secret still signs each "
        "delivery beside the new one (a day); null otherwise.",
    )
    disabled_at: datetime | None = Field(
        description="Since when the endpoint is paused (`enabled: false`); null while it "
        "is enabled."
    )


class WebhookEndpointWithSecret(WebhookEndpoint):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**ENDPOINT_EXAMPLE, "secret": SECRET_EXAMPLE}]}
    )

    secret: str = Field(
        description="`whsec_…`: verifies each delivery's `webhook-signature` (Standard "
        "Webhooks). Shown when the endpoint is made and when the secret is rotated."
    )


class WebhookEndpointList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [ENDPOINT_EXAMPLE]}]})

    items: list[WebhookEndpoint]


class WebhookAttempt(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": DELIVERY_EXAMPLE["attempts"]})

    attempted_at: datetime
    status_code: int | None = Field(description="The endpoint's answer; null if none came.")
    error: str | None
    duration_ms: int


class WebhookDelivery(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [DELIVERY_EXAMPLE]})

    id: UUID = Field(description="The message id, sent as `webhook-id` on every attempt.")
    type: str
    job_id: UUID
    status: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttempt]
    next_attempt_at: datetime | None = Field(
        description="When pending: the next try (null while the endpoint is paused)."
    )
    error: str | None = Field(
        description="When failed: why. The last attempt's error once the retry schedule ran "
        "out, or `expired while the endpoint was paused`: the endpoint was resumed after "
        "the delivery had waited longer than that schedule lasts (about 23 h since its job "
        "ended), so it was not sent again. Null otherwise."
    )
    delivered_at: datetime | None
    created_at: datetime


class WebhookDeliveryList(Page):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [DELIVERY_EXAMPLE], "next_cursor": None}]}
    )

    items: list[WebhookDelivery]


class WebhookEvent(BaseModel):
    """The body of each delivery to an endpoint (`webhooks` in the API document)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "job.completed",
                    "timestamp": "2026-05-04T09:12:11.902000Z",
                    "data": JOB_EXAMPLE,
                },
                {
                    "type": "job.failed",
                    "timestamp": "2026-05-04T09:12:11.902000Z",
                    "data": FAILED_JOB_EXAMPLE,
                },
            ]
        }
    )

    type: EventType
    timestamp: datetime = Field(
        description="When the event happened (the job ended and its deliveries were "
        "queued); the same on every attempt to deliver it."
    )
    data: Job | None = Field(
        description="The job as `GET /v1/jobs/{id}` shows it when this attempt is sent (its "
        "image URL signed for this attempt); null if the job's row was deleted since."
    )
