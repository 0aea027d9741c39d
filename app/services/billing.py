"""Billing with Stripe: the products on sale, Checkout Sessions and the billing portal.

Stripe is called through its async client (httpx), never while a pooled connection is held:
read what is needed, release, call Stripe, then take a connection again to write.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, TypeVar

import asyncpg
import stripe

from app.config import BillingProduct, Settings, origin_of
from app.db import subscriptions
from app.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from app.schemas.billing import (
    CheckoutCreate,
    CheckoutSession,
    PortalCreate,
    PortalSession,
    Product,
    ProductList,
)
from app.services.users import User

log = logging.getLogger("atelier.billing")

T = TypeVar("T")
PRO_STATUSES = frozenset({"active", "trialing"})


@dataclass
class StripeApi:
    """Stripe's client and the HTTP client under it (closed with the app)."""

    client: stripe.StripeClient
    http: stripe.HTTPXClient

    async def aclose(self) -> None:
        await self.http.close_async()  # type: ignore[no-untyped-call]


def build_stripe(settings: Settings) -> StripeApi | None:
    """Stripe's async client from settings, or None without STRIPE_SECRET_KEY.
    Blocking (it loads the CA bundle): call it in a thread."""
    if settings.stripe_secret_key is None:
        return None
    http = stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds)
    client = stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses={"api": settings.stripe_api_base.rstrip("/")},
        http_client=http,
        max_network_retries=settings.stripe_max_network_retries,
    )
    return StripeApi(client, http)


def configured(api: StripeApi | None) -> stripe.StripeClient:
    if api is None:
        raise ServiceUnavailable("Billing is not configured.")
    return api.client


async def call(request: Awaitable[T]) -> T:
    """A Stripe API call whose failure (outage, refusal, timeout) is a 503 problem."""
    try:
        return await request
    except stripe.StripeError as exc:
        log.warning("Stripe call failed: %s: %s", type(exc).__name__, exc)
        raise ServiceUnavailable("Stripe is unavailable; try again later.") from exc


def products(settings: Settings, api: StripeApi | None) -> ProductList:
    configured(api)
    return ProductList(
        items=[Product(id=p.id, mode=p.mode, credits=p.credits) for p in settings.billing_products]
    )


def product_by_id(settings: Settings, product_id: str) -> BillingProduct | None:
    return next((p for p in settings.billing_products if p.id == product_id), None)


def product_by_price(settings: Settings, price_id: str) -> BillingProduct | None:
    return next((p for p in settings.billing_products if p.price_id == price_id), None)


def return_url(settings: Settings, given: str | None, default: str | None, name: str) -> str:
    """`given` (or the default) when it points at an allowed origin; 422 otherwise, so that
    Atelier never sends anyone to a URL a caller chose (no open redirects)."""
    url = given or default
    if url is None:
        raise Unprocessable(f"{name} is required (no default is configured).")
    origin = origin_of(url)
    if origin is None or origin not in settings.checkout_return_origins:
        raise Unprocessable(f"{name} must be an absolute URL on an allowed origin.")
    return url


async def _customer(pool: asyncpg.Pool, client: stripe.StripeClient, user: User) -> str:
    """The user's Stripe customer, created once. Two concurrent first checkouts send the same
    idempotency key, so Stripe makes one customer; the row keeps the first id written."""
    async with pool.acquire() as conn:
        row = await subscriptions.get_for_user(conn, user.id)
    if row is not None and row["stripe_customer_id"]:
        return str(row["stripe_customer_id"])
    customer = await call(
        client.v1.customers.create_async(
            params={"email": user.email, "metadata": {"user_id": user.id}},
            options={"idempotency_key": f"atelier-customer-{user.id}"},
        )
    )
    async with pool.acquire() as conn:
        kept = await subscriptions.set_customer(conn, user.id, customer.id)
    if kept is None:
        raise NotFound("No such user.")
    if kept != customer.id:
        log.warning("user %s: Stripe customer %s was not kept (%s was)", user.id, customer.id, kept)
    return kept


async def checkout(
    pool: asyncpg.Pool,
    settings: Settings,
    api: StripeApi | None,
    user: User,
    body: CheckoutCreate,
) -> CheckoutSession:
    client = configured(api)
    product = product_by_id(settings, body.product_id)
    if product is None:
        raise Unprocessable(f"No product {body.product_id!r}; see GET /v1/billing/products.")
    success = return_url(settings, body.success_url, settings.checkout_success_url, "success_url")
    cancel = return_url(settings, body.cancel_url, settings.checkout_cancel_url, "cancel_url")
    if product.mode == "subscription":
        async with pool.acquire() as conn:
            row = await subscriptions.get_for_user(conn, user.id)
        if row is not None and row["status"] == "Pro":
            raise Conflict("The subscription is active already; manage it in the billing portal.")
    customer = await _customer(pool, client, user)
    metadata = {"user_id": user.id, "product_id": product.id}
    if product.mode == "subscription":
        session = await call(
            client.v1.checkout.sessions.create_async(
                params={
                    "mode": "subscription",
                    "customer": customer,
                    "line_items": [{"price": product.price_id, "quantity": 1}],
                    "client_reference_id": user.id,
                    "metadata": metadata,
                    "subscription_data": {"metadata": metadata},
                    "success_url": success,
                    "cancel_url": cancel,
                }
            )
        )
    else:
        session = await call(
            client.v1.checkout.sessions.create_async(
                params={
                    "mode": "payment",
                    "customer": customer,
                    "line_items": [{"price": product.price_id, "quantity": 1}],
                    "client_reference_id": user.id,
                    "metadata": metadata,
                    "payment_intent_data": {"metadata": metadata},
                    "success_url": success,
                    "cancel_url": cancel,
                }
            )
        )
    if not session.url:
        raise ServiceUnavailable("Stripe made a Checkout Session without a URL.")
    return CheckoutSession(id=session.id, url=session.url)


async def portal(
    pool: asyncpg.Pool,
    settings: Settings,
    api: StripeApi | None,
    user: User,
    body: PortalCreate,
) -> PortalSession:
    client = configured(api)
    back = return_url(settings, body.return_url, settings.portal_return_url, "return_url")
    async with pool.acquire() as conn:
        row = await subscriptions.get_for_user(conn, user.id)
    if row is None or not row["stripe_customer_id"]:
        raise Conflict("There is nothing to manage yet: buy something first.")
    session = await call(
        client.v1.billing_portal.sessions.create_async(
            params={"customer": str(row["stripe_customer_id"]), "return_url": back}
        )
    )
    return PortalSession(url=session.url)


async def delete_customer_for_erasure(
    pool: asyncpg.Pool, api: StripeApi | None, user_id: str
) -> str | None:
    """Delete the user's Stripe customer before the account is erased. Stripe cancels every
    subscription of a deleted customer at once, so nothing goes on charging for an account
    that is gone (erasure deletes the row that names them, and a subscription the row never
    heard of is cancelled too), and what Stripe keeps about the person (email, payment
    methods) goes; the payments stay in Stripe's records. Before that its Checkout Sessions
    are closed (`_close_checkouts`).

    Stripe out of reach, or refusing: a 503 and the caller erases nothing (erasing again
    tries again). Billing not configured here: logged, and the erasure goes on, since no
    one could ever complete it otherwise. Returns the customer's id, if there was one."""
    async with pool.acquire() as conn:
        row = await subscriptions.get_for_user(conn, user_id)
    if row is None or not row["stripe_customer_id"]:
        return None
    customer = str(row["stripe_customer_id"])
    if api is None:
        log.error(
            "user %s is erased without deleting Stripe customer %s: billing is not configured "
            "here; delete it in Stripe",
            user_id,
            customer,
        )
        return customer
    await call(_delete_customer(api.client, customer))
    log.info("user %s: Stripe customer %s deleted before erasure", user_id, customer)
    return customer


async def _close_checkouts(client: stripe.StripeClient, customer: str) -> None:
    """Stop what the customer's Checkout Sessions (every one Atelier makes names the
    customer) could still charge for an account that is going, where a payment would
    grant nothing:
    - open ones are expired; one Stripe will not expire that is still open stops the
      erasure (a 503), so erasing again tries again;
    - completed ones whose money has not arrived (a voucher or a bank debit: `unpaid` until
      it does) have their payment intent cancelled; one Stripe will not cancel any more
      (already processing) is logged as an error, to refund when it arrives.
    Each list is read whole before anything changes, since what changes leaves it.

    Left open: a checkout begun between these lists and the customer's deletion a moment
    later (one request of the same person racing their own erasure)."""
    for session in await _sessions(client, customer, "open"):
        try:
            await client.v1.checkout.sessions.expire_async(session.id)
        except stripe.InvalidRequestError as exc:
            now = await client.v1.checkout.sessions.retrieve_async(session.id)
            if now.status == "open":
                log.error("Stripe refused to expire Checkout Session %s: %s", session.id, exc)
                raise ServiceUnavailable(
                    "Stripe refused to expire an open checkout of the account "
                    f"({exc.user_message or exc}); nothing was erased."
                ) from exc
            log.info("Checkout Session %s was %s before it could be expired", now.id, now.status)
    for session in await _sessions(client, customer, "complete"):
        intent = session.payment_intent
        if session.payment_status != "unpaid" or not isinstance(intent, str):
            continue
        try:
            await client.v1.payment_intents.cancel_async(intent)
        except stripe.InvalidRequestError as exc:
            log.error(
                "customer %s is being erased, but Stripe did not cancel payment intent %s of "
                "Checkout Session %s (%s): if it succeeds, refund it",
                customer,
                intent,
                session.id,
                exc.user_message or exc,
            )
        else:
            log.info("customer %s: payment intent %s cancelled", customer, intent)


async def _sessions(
    client: stripe.StripeClient, customer: str, status: Literal["open", "complete"]
) -> list[stripe.checkout.Session]:
    listed = await client.v1.checkout.sessions.list_async(
        params={"customer": customer, "status": status, "limit": 100}
    )
    return [session async for session in listed.auto_paging_iter()]


async def _delete_customer(client: stripe.StripeClient, customer: str) -> None:
    try:
        await _close_checkouts(client, customer)
        await client.v1.customers.delete_async(customer)
    except stripe.InvalidRequestError as exc:
        if exc.code == "resource_missing":  # deleted already
            return
        log.error("Stripe refused to delete customer %s: %s", customer, exc)
        raise ServiceUnavailable(
            f"Stripe refused to close the account's customer ({exc.user_message or exc}); "
            "nothing was erased."
        ) from exc
