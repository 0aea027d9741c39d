"""Billing: products on sale, Stripe Checkout and the billing portal.

These routes call Stripe, so the caller comes from `StreamUser`: its connection goes back to
the pool before Stripe is asked, and the service takes one again only to read or write.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.deps import JsonBodyRoute, StreamUser, Svc, session_only
from app.openapi import ANY_OPERATION, responses
from app.schemas.billing import (
    CheckoutCreate,
    CheckoutSession,
    PortalCreate,
    PortalSession,
    ProductList,
)
from app.services import billing

# A person buys, not a server: API keys are refused (403).
router = APIRouter(
    prefix="/v1/billing",
    tags=["billing"],
    dependencies=[Depends(session_only)],
    responses=responses(*ANY_OPERATION, 401, 403, 503),
    route_class=JsonBodyRoute,
)


@router.get("/products", operation_id="list_billing_products", response_model=ProductList)
async def list_billing_products(_: StreamUser, svc: Svc) -> ProductList:
    """What can be bought: credit packs (`payment`) and the Pro plan (`subscription`)."""
    return billing.products(svc.settings, svc.stripe)


@router.post(
    "/checkout",
    operation_id="create_checkout_session",
    status_code=201,
    response_model=CheckoutSession,
    responses=responses(409, 422),
)
async def create_checkout_session(
    body: CheckoutCreate, user: StreamUser, svc: Svc
) -> CheckoutSession:
    """Start Stripe Checkout for a product; send the buyer to `url`. Credits arrive when
    Stripe confirms the payment (a webhook), not when this answers. 409: the Pro plan is
    active already; 422: unknown product, or a return URL off the allowed origins."""
    return await billing.checkout(svc.pool, svc.settings, svc.stripe, user, body)


@router.post(
    "/portal",
    operation_id="create_billing_portal_session",
    response_model=PortalSession,
    responses=responses(409, 422),
)
async def create_billing_portal_session(
    user: StreamUser, svc: Svc, body: PortalCreate | None = None
) -> PortalSession:
    """Stripe's billing portal for the caller (invoices, payment method, cancelling Pro).
    409 until the caller has bought something."""
    return await billing.portal(svc.pool, svc.settings, svc.stripe, user, body or PortalCreate())
