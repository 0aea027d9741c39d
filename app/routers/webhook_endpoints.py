"""Outgoing webhooks: endpoints an integrator registers, and the deliveries made to them."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response

from app.deps import Conn, CurrentUser, StreamUser, Svc
from app.errors import ANY_OPERATION, responses
from app.openapi import header_docs
from app.schemas.outgoing import (
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointList,
    WebhookEndpointWithSecret,
)
from app.services import webhook_endpoints

router = APIRouter(
    prefix="/v1/webhook-endpoints", tags=["webhooks"], responses=responses(*ANY_OPERATION, 401, 503)
)


@router.post(
    "",
    operation_id="create_webhook_endpoint",
    status_code=201,
    response_model=WebhookEndpointWithSecret,
    responses={
        201: {"headers": header_docs(Location="The endpoint: `/v1/webhook-endpoints/{id}`")},
        **responses(422),
    },
)
async def create_webhook_endpoint(
    body: WebhookEndpointCreate, user: StreamUser, svc: Svc, response: Response
) -> WebhookEndpointWithSecret:
    """Register a URL for `events`. Each delivery POSTs `{"type", "timestamp", "data"}`
    (`data`: the job as GET /v1/jobs/{id} shows it at that attempt, its image URL fresh),
    signed per Standard Webhooks with `secret`, retried with backoff for about a day.
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
    responses=responses(404, 422),
)
async def list_webhook_deliveries(
    endpoint_id: UUID, user: CurrentUser, conn: Conn
) -> WebhookDeliveryList:
    """The endpoint's latest deliveries (newest first, up to 100), each with its attempts."""
    return WebhookDeliveryList(items=await webhook_endpoints.deliveries(conn, user, endpoint_id))
