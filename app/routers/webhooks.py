"""Incoming webhooks: verified by a dependency, then stored and applied once."""

from __future__ import annotations

import json
from typing import Annotated

import stripe
from fastapi import APIRouter, Depends, Request

from app.deps import Svc
from app.errors import BadRequest, ServiceUnavailable, responses
from app.schemas.billing import WebhookReceipt
from app.services import webhooks

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


async def stripe_event(request: Request, svc: Svc) -> webhooks.Event:
    """The event, once `Stripe-Signature` proves Stripe sent it recently (400 otherwise)."""
    settings = svc.settings
    if svc.stripe is None or settings.stripe_webhook_secret is None:
        raise ServiceUnavailable("Billing is not configured.")
    payload = await request.body()
    try:
        stripe.WebhookSignature.verify_header(
            payload,
            request.headers.get("stripe-signature"),
            settings.stripe_webhook_secret.get_secret_value(),
            stripe.Webhook.DEFAULT_TOLERANCE,
        )
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise BadRequest("The Stripe-Signature header does not verify this body.") from exc
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise BadRequest("The body is not a JSON Stripe event.") from exc
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
    ):
        raise BadRequest("The body is not a Stripe event (id, type and data).")
    return webhooks.Event("stripe", event["id"], event["type"], event)


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
