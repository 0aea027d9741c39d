"""Incoming webhooks: verified by a dependency, then stored and applied once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.deps import Svc
from app.errors import ServiceUnavailable
from app.openapi import ANY_OPERATION, responses
from app.schemas.billing import WebhookReceipt
from app.services import clerk_events, stripe_events, webhooks

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=responses(*ANY_OPERATION))


async def stripe_event(request: Request, svc: Svc) -> webhooks.Event:
    """The event, once `Stripe-Signature` proves Stripe sent it recently (400 otherwise)."""
    if svc.stripe is None:
        raise ServiceUnavailable("Billing is not configured.")
    payload = await request.body()
    return stripe_events.verified_event(
        svc.settings, payload, request.headers.get("stripe-signature")
    )


@router.post(
    "/stripe",
    operation_id="receive_stripe_webhook",
    response_model=WebhookReceipt,
    responses=responses(400, 500, 503),
)
async def receive_stripe_webhook(
    event: Annotated[webhooks.Event, Depends(stripe_event)], svc: Svc
) -> WebhookReceipt:
    """Stripe's webhook endpoint (signed with STRIPE_WEBHOOK_SECRET). Each event is stored
    once and applied once; a failure answers 500, so Stripe delivers it again."""
    outcome = await webhooks.receive(svc.pool, svc.webhook_handlers, event)
    return WebhookReceipt(outcome=outcome)


async def clerk_event(request: Request, svc: Svc) -> webhooks.Event:
    """The event, once its Svix headers prove Clerk sent it recently (400 otherwise)."""
    payload = await request.body()
    return clerk_events.verified_event(svc.settings, payload, dict(request.headers))


@router.post(
    "/clerk",
    operation_id="receive_clerk_webhook",
    response_model=WebhookReceipt,
    responses=responses(400, 500, 503),
)
async def receive_clerk_webhook(
    event: Annotated[webhooks.Event, Depends(clerk_event)], svc: Svc
) -> WebhookReceipt:
    """Clerk's webhook endpoint (Svix-signed with CLERK_WEBHOOK_SECRET): `user.created`,
    `user.updated` and `user.deleted` (the account's erasure). Stored once by `svix-id`,
    applied once; a failure answers 500, so Svix delivers it again."""
    outcome = await webhooks.receive(svc.pool, svc.webhook_handlers, event)
    return WebhookReceipt(outcome=outcome)
