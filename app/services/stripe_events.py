"""What Stripe's webhook events do, as the `stripe` handler of app.services.webhooks.

Each is idempotent and tolerates any order:
- a paid credit-pack Checkout Session grants its credits once per session id (`purchase`);
- `customer.subscription.*` re-reads the subscription from Stripe (so the row gets Stripe's
  current state, not the event's snapshot) and writes it unless a newer event did already;
- `invoice.paid` for the Pro price grants the plan's credits once per invoice id, for a new
  subscription's first invoice and each renewal's only (`GRANTING_INVOICES`);
- a fully refunded charge, or a dispute lost, of a pack's payment takes the pack's credits
  back (down to zero at most) once per charge (`purchase_reversal`); the payment is mapped
  to its Checkout Session through Stripe, and a purchase not applied yet is applied first.
Anything else is stored and ignored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import stripe

from app.config import Settings
from app.db import subscriptions, webhook_events
from app.db import users as users_db
from app.errors import BadRequest, ServiceUnavailable
from app.services import credits
from app.services.billing import PRO_STATUSES, StripeApi, product_by_id, product_by_price
from app.services.webhooks import Event

log = logging.getLogger("atelier.billing.webhooks")

# The invoices of the plan that grant its month of credits: the first one of a subscription
# (a $0 trial's too) and each renewal; and an update's (`subscription_update`) that bills a
# whole new period with nothing prorated (a trial ended early, a paused subscription resumed
# with a new billing anchor). A proration for a change of plan or quantity, or an invoice
# made by hand (`manual`), grants none: a month's credits for each change would let a
# customer who may switch back and forth in the billing portal buy credits at a proration's
# price.
GRANTING_INVOICES = frozenset({"subscription_create", "subscription_cycle"})

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
PURCHASE_EVENTS = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)
REVERSAL_EVENTS = frozenset({"charge.refunded", "charge.dispute.closed"})


def verified_event(settings: Settings, payload: bytes, signature: str | None) -> Event:
    """The event in `payload` once `signature` (the Stripe-Signature header) proves that Stripe
    signed it with STRIPE_WEBHOOK_SECRET within the last five minutes; BadRequest otherwise."""
    if settings.stripe_webhook_secret is None:
        raise ServiceUnavailable("Billing is not configured.")
    try:
        stripe.WebhookSignature.verify_header(
            payload,
            signature,
            settings.stripe_webhook_secret.get_secret_value(),
            stripe.Webhook.DEFAULT_TOLERANCE,
        )
        event = json.loads(payload)
    except (stripe.SignatureVerificationError, ValueError) as exc:
        # ValueError: a body that is not UTF-8 or not JSON (Stripe never signs such a thing)
        raise BadRequest("The Stripe-Signature header does not verify this body.") from exc
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
    ):
        raise BadRequest("The body is not a Stripe event (id, type and data).")
    return Event("stripe", event["id"], event["type"], event)


class StripeEventError(Exception):
    """An event that cannot be applied as things stand (kept, retried, replayable)."""


@dataclass(frozen=True)
class Fetched:
    """What prepare() read from Stripe: a subscription, or the pack's Checkout Session."""

    subscription: dict[str, Any] | None = None
    session: dict[str, Any] | None = None


def _object(event: Event) -> dict[str, Any]:
    obj: dict[str, Any] = event.payload.get("data", {}).get("object", {})
    return obj


def _timestamp(value: object) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


def _id(value: object) -> str | None:
    """An id field, which Stripe sends as a string or, expanded, as an object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _reversed_charge(event: Event) -> tuple[str, str] | None:
    """(charge id, payment_intent id) when the event takes a payment back in full."""
    obj = _object(event)
    if event.type == "charge.refunded":
        if not obj.get("refunded"):
            return None  # a partial refund: see the README's refund policy
        charge = _id(obj.get("id"))
    elif event.type == "charge.dispute.closed":
        if obj.get("status") != "lost":
            return None
        charge = _id(obj.get("charge"))
    else:
        return None
    payment_intent = _id(obj.get("payment_intent"))
    if charge is None or payment_intent is None:
        return None
    return charge, payment_intent


class StripeEvents:
    def __init__(self, settings: Settings, api: StripeApi | None) -> None:
        self._settings = settings
        self._api = api

    def _client(self) -> StripeApi:
        if self._api is None:
            raise StripeEventError("STRIPE_SECRET_KEY is not set: Stripe cannot be asked")
        return self._api

    async def prepare(self, event: Event) -> object:
        if event.type in SUBSCRIPTION_EVENTS:
            subscription_id = _id(_object(event).get("id"))
            if subscription_id is None:
                return Fetched()
            client = self._client().client
            found = await client.v1.subscriptions.retrieve_async(subscription_id)
            return Fetched(subscription=found.to_dict())
        reversed_charge = _reversed_charge(event)
        if reversed_charge is not None:
            client = self._client().client
            sessions = await client.v1.checkout.sessions.list_async(
                params={"payment_intent": reversed_charge[1], "limit": 1}
            )
            return Fetched(session=sessions.data[0].to_dict() if sessions.data else None)
        return Fetched()

    async def apply(self, conn: asyncpg.Connection, event: Event, prepared: object) -> None:
        fetched = prepared if isinstance(prepared, Fetched) else Fetched()
        if event.type in PURCHASE_EVENTS:
            await self._purchase(conn, _object(event))
        elif event.type in SUBSCRIPTION_EVENTS:
            await self._subscription(conn, event, fetched.subscription)
        elif event.type == "invoice.paid":
            await self._invoice(conn, _object(event))
        elif event.type in REVERSAL_EVENTS:
            await self._reversal(conn, event, fetched.session)
        # An event about an erased account (the subscription's end or `customer.deleted`
        # that the erasure caused, a payment made just before) keeps nothing of what it said.
        subject = _subject(_object(event))
        if subject is not None and await _erased(conn, subject):
            await webhook_events.scrub(conn, event.provider, event.id)

    async def _purchase(self, conn: asyncpg.Connection, session: dict[str, Any]) -> None:
        """A paid credit pack's session: its credits, once per session id."""
        if session.get("mode") != "payment" or session.get("payment_status") != "paid":
            return  # the plan is paid by invoices; an async payment completes later
        metadata = session.get("metadata") or {}
        user_id = session.get("client_reference_id") or metadata.get("user_id")
        product_id = metadata.get("product_id")
        if not user_id or not product_id:
            log.info("checkout session %s was not made by Atelier: ignored", session.get("id"))
            return
        product = product_by_id(self._settings, product_id)
        if product is None or product.mode != "payment":
            raise StripeEventError(f"product {product_id!r} is not a configured credit pack")
        if await _erased(conn, user_id):
            log.warning(
                "checkout session %s was paid for %s, whose account is erased: nothing "
                "granted; refund it in Stripe",
                session.get("id"),
                user_id,
            )
            return
        result = await credits.grant(
            conn, user_id, product.credits, "purchase", str(session["id"]), note=product.id
        )
        log.info(
            "purchase %s: %s credits for %s (%s)",
            session["id"],
            product.credits,
            user_id,
            "applied" if result.applied else "applied before",
        )

    async def _subscription(
        self, conn: asyncpg.Connection, event: Event, subscription: dict[str, Any] | None
    ) -> None:
        if subscription is None:
            return
        customer = _id(subscription.get("customer"))
        user_id = await subscriptions.user_for_customer(conn, customer) if customer else None
        user_id = user_id or (subscription.get("metadata") or {}).get("user_id")
        if customer is None or not user_id:
            log.info("subscription %s is not an Atelier user's: ignored", subscription.get("id"))
            return
        if await _erased(conn, user_id):
            # Erasure deleted the customer, which ended its subscriptions: the row is gone.
            log.info("subscription %s of erased %s: ignored", subscription.get("id"), user_id)
            return
        items = (subscription.get("items") or {}).get("data") or []
        price_id = _id(items[0].get("price")) if items else None
        # Since API version 2025-03-31 the period is on the items, before that on the subscription.
        period_end = subscription.get("current_period_end") or max(
            (i.get("current_period_end") or 0 for i in items), default=None
        )
        stripe_status = str(subscription.get("status"))
        written = await subscriptions.apply_stripe_state(
            conn,
            user_id,
            customer_id=customer,
            subscription_id=str(subscription["id"]),
            status="Pro" if stripe_status in PRO_STATUSES else "Free",
            stripe_status=stripe_status,
            price_id=price_id,
            current_period_end=_timestamp(period_end),
            cancel_at_period_end=bool(subscription.get("cancel_at_period_end")),
            event_at=_timestamp(event.payload.get("created")) or datetime.now(UTC),
        )
        if not written:
            log.info(
                "subscription event %s not applied: older than the row's, or no user %s",
                event.id,
                user_id,
            )

    async def _invoice(self, conn: asyncpg.Connection, invoice: dict[str, Any]) -> None:
        """A paid invoice of the Pro plan: its credits, once per invoice id."""
        plans = [product_by_price(self._settings, price) for price in _prices(invoice)]
        product = next((p for p in plans if p is not None and p.mode == "subscription"), None)
        if product is None:
            return
        reason = invoice.get("billing_reason")
        if reason not in GRANTING_INVOICES and not (
            reason == "subscription_update" and _whole_period(invoice, product.price_id)
        ):
            log.info(
                "invoice %s (%s) of the plan grants no credits: only a new subscription's, "
                "each renewal's and an update's billing a whole period unprorated do",
                invoice.get("id"),
                reason,
            )
            return
        customer = _id(invoice.get("customer"))
        user_id = await subscriptions.user_for_customer(conn, customer) if customer else None
        if user_id is None:
            # Erasure deletes the subscription row (and the customer first): an invoice paid
            # just before can still arrive, for an account now gone.
            named = _invoice_user(invoice)
            if named is not None and await _erased(conn, named):
                log.warning(
                    "invoice %s was paid for %s, whose account is erased: nothing granted; "
                    "refund it in Stripe",
                    invoice.get("id"),
                    named,
                )
                return
            raise StripeEventError(f"invoice {invoice.get('id')}: customer {customer} is unknown")
        await credits.grant(
            conn,
            user_id,
            product.credits,
            "subscription_grant",
            str(invoice["id"]),
            note=product.id,
        )

    async def _reversal(
        self, conn: asyncpg.Connection, event: Event, session: dict[str, Any] | None
    ) -> None:
        reversed_charge = _reversed_charge(event)
        if reversed_charge is None or session is None or session.get("mode") != "payment":
            return  # partial refund, dispute won, or not a pack's payment
        # The purchase may not be applied yet (events arrive in any order): apply it first.
        await self._purchase(conn, session)
        charge = reversed_charge[0]
        why = "refunded" if event.type == "charge.refunded" else "dispute lost"
        reversal = await credits.reverse_purchase(
            conn, str(session["id"]), f"reversal:{charge}", f"charge {charge} {why}"
        )
        if reversal is not None:
            log.info(
                "charge %s %s: took back %s of %s credits from %s",
                charge,
                why,
                reversal.taken,
                reversal.purchased,
                reversal.user_id,
            )


async def _erased(conn: asyncpg.Connection, user_id: str) -> bool:
    """Whether the account is erased, its row held until the event's transaction ends: an
    erasure under way is waited for (the subscription's end its deletion of the customer
    causes can arrive while it runs), and none can start before what the event writes."""
    row = await users_db.hold(conn, user_id)
    return row is not None and row["erased_at"] is not None


def _subject(obj: dict[str, Any]) -> str | None:
    """The Atelier user an event's object is about, as Atelier marked it at Stripe: the
    metadata of customers, sessions and subscriptions, a session's client reference, an
    invoice's subscription."""
    metadata = obj.get("metadata")
    user_id = (metadata.get("user_id") if isinstance(metadata, dict) else None) or obj.get(
        "client_reference_id"
    )
    return str(user_id) if isinstance(user_id, str) and user_id else _invoice_user(obj)


def _invoice_user(invoice: dict[str, Any]) -> str | None:
    """The user id Atelier put on the invoice's subscription (its metadata), if any: under
    `parent.subscription_details` since API version 2025-03-31, `subscription_details`
    before."""
    parent = invoice.get("parent")
    details = (parent.get("subscription_details") if isinstance(parent, dict) else None) or (
        invoice.get("subscription_details")
    )
    metadata = details.get("metadata") if isinstance(details, dict) else None
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    return str(user_id) if isinstance(user_id, str) and user_id else None


def _lines(invoice: dict[str, Any]) -> list[tuple[str | None, bool]]:
    """(price id, whether a proration) of each line an invoice bills, in either of Stripe's
    line shapes."""
    found = []
    for line in (invoice.get("lines") or {}).get("data") or []:
        price = _id(line.get("price"))  # before API version 2025-03-31
        details = (line.get("pricing") or {}).get("price_details") or {}
        parent = line.get("parent") or {}
        item = parent.get("subscription_item_details") or parent.get("invoice_item_details") or {}
        proration = bool(line.get("proration") or item.get("proration"))
        found.append((price or _id(details.get("price")), proration))
    return found


def _prices(invoice: dict[str, Any]) -> list[str]:
    """The price ids an invoice bills."""
    return [price for price, _ in _lines(invoice) if price]


def _whole_period(invoice: dict[str, Any], price_id: str) -> bool:
    """Whether the invoice bills a whole period of `price_id` and nothing prorated."""
    lines = _lines(invoice)
    whole = any(price == price_id and not proration for price, proration in lines)
    return whole and not any(proration for _, proration in lines)
