"""Outgoing webhooks: endpoints an integrator registers, and the deliveries made to them."""

from __future__ import annotations

from typing import Annotated, Any, get_args
from uuid import UUID

from fastapi import APIRouter, Header, Response

from app.config import Settings
from app.deps import Conn, CurrentUser, JsonBodyRoute, StreamUser, Svc
from app.openapi import ANY_OPERATION, header_docs, responses
from app.schemas.common import Cursor, Limit
from app.schemas.outgoing import (
    EventType,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointList,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookEvent,
)
from app.services import outgoing, webhook_endpoints

router = APIRouter(
    prefix="/v1/webhook-endpoints",
    tags=["webhooks"],
    responses=responses(*ANY_OPERATION, 401, 503),
    route_class=JsonBodyRoute,
)
# A registration's or a URL change's 409: a per-user cap, or the caller's previous URL check
# still running (webhook_endpoints.still_checking), which alone says when to try again.
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        **responses(409)[409],
        "description": "A per-user cap reached (`limit`), or another URL of the caller's "
        "still being looked up (`Retry-After`)",
        "headers": header_docs(
            Retry_After="Seconds to wait before trying again, when another URL of the "
            "caller's was still being looked up; absent when a cap was reached"
        ),
    }
}


@router.post(
    "",
    operation_id="create_webhook_endpoint",
    status_code=201,
    response_model=WebhookEndpointWithSecret,
    responses={
        201: {
            "headers": header_docs(
                required=True, Location="The endpoint: `/v1/webhook-endpoints/{id}`"
            )
        },
        **_CONFLICT,
        **responses(422),
    },
)
async def create_webhook_endpoint(
    body: WebhookEndpointCreate, user: StreamUser, svc: Svc, response: Response
) -> WebhookEndpointWithSecret:
    """Register a URL for `events`. Each delivery POSTs `{"type", "timestamp", "data"}`
    (`data`: the job as GET /v1/jobs/{id} shows it at that attempt, its image URL fresh),
    signed per Standard Webhooks with `secret`, retried with backoff for about a day.
    409: the caller has `WEBHOOK_ENDPOINTS_MAX` endpoints already (10; `limit` says it), or
    another URL of the caller's was still being looked up all this request's deadline
    (they run one at a time; `Retry-After`).
    422: not https, or a private address (in development, loopback is allowed, over http
    too)."""
    created = await webhook_endpoints.create(svc.pool, svc.settings, user, body)
    response.headers["Location"] = f"/v1/webhook-endpoints/{created.id}"
    return created


@router.get("", operation_id="list_webhook_endpoints", response_model=WebhookEndpointList)
async def list_webhook_endpoints(user: CurrentUser, conn: Conn) -> WebhookEndpointList:
    """The caller's endpoints (without their secrets)."""
    return WebhookEndpointList(items=await webhook_endpoints.list_endpoints(conn, user))


@router.get(
    "/{endpoint_id}",
    operation_id="get_webhook_endpoint",
    response_model=WebhookEndpoint,
    responses=responses(404, 422),
)
async def get_webhook_endpoint(endpoint_id: UUID, user: CurrentUser, conn: Conn) -> WebhookEndpoint:
    """One of the caller's endpoints (without its secret)."""
    return await webhook_endpoints.get(conn, user, endpoint_id)


@router.patch(
    "/{endpoint_id}",
    operation_id="update_webhook_endpoint",
    response_model=WebhookEndpoint,
    responses={**responses(404), **_CONFLICT, **responses(422)},
)
async def update_webhook_endpoint(
    endpoint_id: UUID, body: WebhookEndpointUpdate, user: StreamUser, svc: Svc
) -> WebhookEndpoint:
    """Change the fields sent. A new `url` is checked as at registration (409 and 422 as
    there); pending deliveries go to it at once if their next try was over a minute or so
    off (a sender's lease), else at that try (an attempt already under way ends at the old
    one). `events` apply to jobs that end from now on. `enabled: false` pauses the
    endpoint: nothing is queued for it, and its pending deliveries wait until
    `enabled: true`, then go out a lease later (about 50 s), but for those older than the
    retry schedule lasts (about 23 h since their job ended): they are `failed`, unsent."""
    return await webhook_endpoints.update(svc.pool, svc.settings, user, endpoint_id, body)


@router.delete(
    "/{endpoint_id}",
    operation_id="delete_webhook_endpoint",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def delete_webhook_endpoint(endpoint_id: UUID, user: CurrentUser, conn: Conn) -> Response:
    """Delete the endpoint: nothing more is sent to it, pending deliveries included."""
    await webhook_endpoints.delete(conn, user, endpoint_id)
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/secret",
    operation_id="rotate_webhook_endpoint_secret",
    response_model=WebhookEndpointWithSecret,
    responses=responses(404, 422),
)
async def rotate_webhook_endpoint_secret(
    endpoint_id: UUID, user: CurrentUser, conn: Conn
) -> WebhookEndpointWithSecret:
    """Replace the endpoint's secret: every attempt from now on is signed with the new one."""
    return await webhook_endpoints.rotate_secret(conn, user, endpoint_id)


@router.get(
    "/{endpoint_id}/deliveries",
    operation_id="list_webhook_deliveries",
    response_model=WebhookDeliveryList,
    responses=responses(400, 404, 422),
)
async def list_webhook_deliveries(
    endpoint_id: UUID,
    user: CurrentUser,
    conn: Conn,
    cursor: Cursor = None,
    limit: Limit = webhook_endpoints.DELIVERIES_LISTED,
) -> WebhookDeliveryList:
    """The endpoint's deliveries, newest first, each with its attempts, a page at a time
    (100 unless `limit` says fewer)."""
    return await webhook_endpoints.deliveries(conn, user, endpoint_id, cursor, limit)


# What each delivery is, from the receiver's side: the API document's `webhooks` (OpenAPI 3.1),
# one operation per event type. Nothing here is served; app.main hands it to `app.webhooks`.
events = APIRouter(tags=["webhooks"])


def _spoken(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


_SCHEDULE = ", ".join(_spoken(seconds) for seconds in outgoing.RETRY_SCHEDULE)
_TIMEOUT = _spoken(Settings.model_fields["webhook_timeout_seconds"].default)


async def _delivery(
    event: WebhookEvent,
    webhook_id: Annotated[
        UUID,
        Header(
            description="The delivery's id, the same on every attempt (the `id` in "
            "`/v1/webhook-endpoints/{id}/deliveries`): skip one you have already handled."
        ),
    ],
    webhook_timestamp: Annotated[
        str,
        Header(
            pattern="^[0-9]+$",
            description="When this attempt was sent, in Unix seconds (signed): refuse one far "
            "from your clock (Standard Webhooks' libraries allow five minutes).",
        ),
    ],
    webhook_signature: Annotated[
        str,
        Header(
            description="`v1,<base64 HMAC-SHA256>` of `{webhook-id}.{webhook-timestamp}.{body}` "
            "keyed with the endpoint's secret, the bytes whose base64 follows `whsec_` "
            "(Standard Webhooks; its libraries verify it). For a "
            "day after a rotation, two signatures separated by a space: the new secret's and "
            "the replaced one's; accept the delivery if either verifies."
        ),
    ],
) -> None:
    """Never called: its parameters document a delivery."""


for _type in get_args(EventType):
    events.add_api_route(
        _type,
        _delivery,
        methods=["POST"],
        operation_id=_type.replace(".", "_"),
        summary=f"{_type}: a job of the endpoint's user "
        + ("completed" if _type == "job.completed" else "failed, its credits refunded"),
        description=f"Sent to each endpoint subscribed to `{_type}`, as a POST of JSON with "
        f"the user agent `{outgoing.USER_AGENT}`. An answer in 2xx within the endpoint "
        f"timeout (`WEBHOOK_TIMEOUT_SECONDS`, {_TIMEOUT} by default) delivers it; anything else is "
        f"tried again after {_SCHEDULE} (about a day), then the delivery is `failed`.",
        response_class=Response,
        response_description="Any 2xx: delivered (the body is not read).",
        responses={"default": {"description": "Anything else, or no answer: tried again."}},
    )
