"""POST /webhooks/stripe: signed events, stored once, applied once, in any order."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.billing.conftest import deliver, signed
from tests.fakes.stripe_api import StripeApiServer, sign
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]


async def balance(db: asyncpg.Connection, user_id: str) -> int:
    return int(await db.fetchval("SELECT credits FROM users WHERE id = $1", user_id))


async def ledger(db: asyncpg.Connection, user_id: str) -> list[tuple[str, int, str | None]]:
    rows = await db.fetch(
        "SELECT reason, delta, source_id FROM credit_ledger WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    return [(r["reason"], r["delta"], r["source_id"]) for r in rows]


async def stored(db: asyncpg.Connection, event_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT type, processed_at, error, attempts FROM webhook_events"
        " WHERE provider = 'stripe' AND event_id = $1",
        event_id,
    )


async def checkout(
    client: httpx.AsyncClient, headers: dict[str, str], product_id: str = "credits_50"
) -> str:
    response = await client.post(
        "/v1/billing/checkout", json={"product_id": product_id}, headers=headers
    )
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


async def bought_pack(
    client: httpx.AsyncClient, stripe_api: StripeApiServer, headers: dict[str, str]
) -> dict[str, Any]:
    """A pack checked out and paid at Stripe (no webhook delivered yet): the session."""
    return stripe_api.pay(await checkout(client, headers))


# --- signatures ------------------------------------------------------------------------------


async def test_forged_missing_or_stale_signatures_are_400_and_store_nothing(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    session = await bought_pack(billing, stripe_api, auth_headers("user_forge"))
    event = stripe_api.event("checkout.session.completed", session)
    payload = json.dumps(event)
    attempts = {
        "missing": {},
        "other secret": {"Stripe-Signature": sign(payload, secret="whsec_not_ours")},
        "stale": {"Stripe-Signature": sign(payload, timestamp=int(time.time()) - 3600)},
        "garbage": {"Stripe-Signature": "t=abc,v1=zzz"},
        "another body": {"Stripe-Signature": sign(payload.replace("50", "5000"))},
    }
    for name, headers in attempts.items():
        response = await billing.post("/webhooks/stripe", content=payload, headers=headers)
        assert_problem(response, 400), name
    # Signed, but not an event: refused too.
    for body_text in ("[]", '{"id": "evt_x"}', "not json"):
        headers = {"Stripe-Signature": sign(body_text)}
        response = await billing.post("/webhooks/stripe", content=body_text, headers=headers)
        assert_problem(response, 400)
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0
    assert await balance(db, "user_forge") == 5
    # Changing the body after signing is refused too.
    body, headers = signed(event)
    tampered = body.replace(b'"paid"', b'"paid" ')
    assert_problem(await billing.post("/webhooks/stripe", content=tampered, headers=headers), 400)
    # The genuine delivery works.
    assert (
        await billing.post("/webhooks/stripe", content=body, headers=headers)
    ).status_code == 200
    assert await balance(db, "user_forge") == 55


# --- credit packs ------------------------------------------------------------------------------


async def test_a_paid_pack_delivered_three_times_at_once_and_again_later_grants_once(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    session = await bought_pack(billing, stripe_api, auth_headers("user_pack"))
    event = stripe_api.event("checkout.session.completed", session)
    answers = await asyncio.gather(*(deliver(billing, event) for _ in range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert sorted(a.json()["outcome"] for a in answers).count("processed") == 1
    later = await deliver(billing, event)
    assert later.status_code == 200 and later.json()["outcome"] == "duplicate"

    assert await balance(db, "user_pack") == 55
    assert await ledger(db, "user_pack") == [
        ("signup", 5, None),
        ("purchase", 50, session["id"]),
    ]
    row = await stored(db, event["id"])
    assert row is not None and row["processed_at"] is not None and row["error"] is None
    assert row["attempts"] == 1
    # Stripe may send the same session again in another event: still once per session.
    retold = stripe_api.event("checkout.session.completed", session)
    assert (await deliver(billing, retold)).json()["outcome"] == "processed"
    assert await balance(db, "user_pack") == 55


async def test_an_unpaid_session_grants_only_when_its_async_payment_succeeds(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_async")
    session_id = await checkout(billing, headers)
    pending = dict(stripe_api.sessions[session_id], status="complete", payment_status="unpaid")
    pending = {k: v for k, v in pending.items() if not k.startswith("_")}
    answer = await deliver(billing, stripe_api.event("checkout.session.completed", pending))
    assert answer.status_code == 200
    assert await balance(db, "user_async") == 5
    paid = stripe_api.pay(session_id)
    succeeded = stripe_api.event("checkout.session.async_payment_succeeded", paid)
    assert (await deliver(billing, succeeded)).status_code == 200
    assert await balance(db, "user_async") == 55


async def test_other_event_types_are_stored_answered_200_and_ignored(
    billing: httpx.AsyncClient, stripe_api: StripeApiServer, db: asyncpg.Connection
) -> None:
    event = stripe_api.event("customer.created", {"id": "cus_x", "object": "customer"})
    answer = await deliver(billing, event)
    assert answer.status_code == 200 and answer.json()["outcome"] == "processed"
    row = await stored(db, event["id"])
    assert row is not None and row["type"] == "customer.created"
    assert row["processed_at"] is not None
    payload = await db.fetchval(
        "SELECT payload FROM webhook_events WHERE event_id = $1", event["id"]
    )
    assert json.loads(payload) == event


async def test_an_event_is_read_whatever_content_type_it_is_labelled_with(
    billing: httpx.AsyncClient, stripe_api: StripeApiServer
) -> None:
    """The signature over the bytes decides, never the label: a receiver does not answer
    415 as the JSON operations do."""
    for content_type in ("text/plain", "application/octet-stream", None):
        event = stripe_api.event("customer.created", {"id": "cus_y", "object": "customer"})
        body, headers = signed(event)
        del headers["Content-Type"]
        if content_type:
            headers["Content-Type"] = content_type
        answer = await billing.post("/webhooks/stripe", content=body, headers=headers)
        assert answer.status_code == 200, (content_type, answer.text)
        assert answer.json()["outcome"] == "processed"


# --- subscriptions -----------------------------------------------------------------------------


async def subscribed(
    client: httpx.AsyncClient, stripe_api: StripeApiServer, headers: dict[str, str]
) -> dict[str, Any]:
    return stripe_api.subscribe(await checkout(client, headers, "pro"))


async def me(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.get("/v1/me", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_subscription_events_keep_the_shared_row_as_stripe_says(
    billing: httpx.AsyncClient, auth_headers: Headers, stripe_api: StripeApiServer
) -> None:
    headers = auth_headers("user_sub")
    subscription = await subscribed(billing, stripe_api, headers)
    created = stripe_api.event("customer.subscription.created", subscription)
    assert (await deliver(billing, created)).status_code == 200
    shown = (await me(billing, headers))["subscription"]
    period_end = subscription["items"]["data"][0]["current_period_end"]
    assert shown["status"] == "Pro"
    assert shown["stripe_status"] == "active"
    assert shown["price_id"] == "price_pro"
    assert shown["cancel_at_period_end"] is False
    assert shown["current_period_end"].startswith(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(period_end))
    )

    cancelling = stripe_api.update_subscription(subscription["id"], cancel_at_period_end=True)
    updated = stripe_api.event("customer.subscription.updated", cancelling, created["created"] + 1)
    assert (await deliver(billing, updated)).status_code == 200
    shown = (await me(billing, headers))["subscription"]
    assert (shown["status"], shown["cancel_at_period_end"]) == ("Pro", True)

    for stripe_status, app_status in (
        ("past_due", "Free"),
        ("trialing", "Pro"),
        ("unpaid", "Free"),
        ("active", "Pro"),
        ("canceled", "Free"),
    ):
        changed = stripe_api.update_subscription(subscription["id"], status=stripe_status)
        event = stripe_api.event("customer.subscription.updated", changed, updated["created"] + 1)
        updated = event
        assert (await deliver(billing, event)).status_code == 200
        shown = (await me(billing, headers))["subscription"]
        assert (shown["status"], shown["stripe_status"]) == (app_status, stripe_status)


async def test_an_older_subscription_event_arriving_late_does_not_roll_the_row_back(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_order")
    subscription = await subscribed(billing, stripe_api, headers)
    now = int(time.time())
    created = stripe_api.event("customer.subscription.created", subscription, now - 20)
    active_snapshot = dict(subscription)
    cancelled = stripe_api.update_subscription(subscription["id"], status="canceled")
    deleted = stripe_api.event("customer.subscription.deleted", cancelled, now - 10)

    assert (await deliver(billing, deleted)).status_code == 200
    assert (await deliver(billing, created)).status_code == 200  # older, and late
    shown = (await me(billing, headers))["subscription"]
    assert (shown["status"], shown["stripe_status"]) == ("Free", "canceled")

    # Even an event whose own snapshot says active, and is newer, shows Stripe's state now.
    stale_snapshot = stripe_api.event("customer.subscription.updated", active_snapshot, now)
    assert (await deliver(billing, stale_snapshot)).status_code == 200
    shown = (await me(billing, headers))["subscription"]
    assert (shown["status"], shown["stripe_status"]) == ("Free", "canceled")
    assert (
        await db.fetchval(
            "SELECT stripe_subscription_id FROM subscriptions WHERE user_id = 'user_order'"
        )
        == subscription["id"]
    )


async def test_the_end_of_an_old_subscription_does_not_turn_off_a_new_one(
    billing: httpx.AsyncClient, auth_headers: Headers, stripe_api: StripeApiServer
) -> None:
    headers = auth_headers("user_twice")
    old = await subscribed(billing, stripe_api, headers)
    new = await subscribed(billing, stripe_api, headers)
    now = int(time.time())
    stripe_api.update_subscription(old["id"], status="canceled")
    await deliver(billing, stripe_api.event("customer.subscription.created", new, now - 5))
    answer = await deliver(billing, stripe_api.event("customer.subscription.deleted", old, now))
    assert answer.status_code == 200
    shown = (await me(billing, headers))["subscription"]
    assert (shown["status"], shown["stripe_status"]) == ("Pro", "active")


async def test_invoice_paid_grants_the_plan_credits_once_per_invoice(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_invoice")
    subscription = await subscribed(billing, stripe_api, headers)
    first = stripe_api.invoice(subscription["id"])
    second = stripe_api.invoice(subscription["id"])
    for invoice in (first, first, second):
        answer = await deliver(billing, stripe_api.event("invoice.paid", invoice))
        assert answer.status_code == 200, answer.text
    assert await balance(db, "user_invoice") == 5 + 200 + 200
    assert [e for e in await ledger(db, "user_invoice") if e[0] == "subscription_grant"] == [
        ("subscription_grant", 200, first["id"]),
        ("subscription_grant", 200, second["id"]),
    ]
    # An invoice for something else (here: a pack's price) grants nothing.
    other = stripe_api.invoice(subscription["id"])
    other["lines"]["data"][0]["pricing"]["price_details"]["price"] = "price_50"
    assert (await deliver(billing, stripe_api.event("invoice.paid", other))).status_code == 200
    assert await balance(db, "user_invoice") == 405


def _prorated(invoice: dict[str, Any], legacy_shape: bool = False) -> None:
    """The invoice's plan line made a proration, and a credit for the unused time added."""
    [line] = invoice["lines"]["data"]
    credit = copy.deepcopy(line) | {"id": f"{line['id']}_credit", "amount": -1583}
    for item in (line, credit):
        if legacy_shape:  # before API version 2025-03-31
            item["proration"] = True
        else:
            details = {"subscription": "sub", "proration": True}
            item["parent"] = {"type": "subscription_item_details"}
            item["parent"]["subscription_item_details"] = details
    invoice["lines"]["data"].append(credit)


@pytest.mark.parametrize(
    ("billing_reason", "prorated", "granted"),
    [
        ("subscription_create", "no", 200),
        ("subscription_cycle", "no", 200),
        # an update that bills a whole new period (a trial ended early, a paused subscription
        # resumed with billing_cycle_anchor=now): the customer paid a whole period
        ("subscription_update", "no", 200),
        # a change of plan or quantity, prorated: no month of credits at a proration's price
        ("subscription_update", "yes", 0),
        ("subscription_update", "legacy", 0),
        ("subscription_cycle", "yes", 200),  # a renewal that carries a proration still renews
        ("manual", "no", 0),
        (None, "no", 0),
    ],
)
async def test_a_new_subscriptions_invoice_a_renewals_and_a_whole_periods_grant_credits(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
    billing_reason: str | None,
    prorated: str,
    granted: int,
) -> None:
    headers = auth_headers("user_proration")
    subscription = await subscribed(billing, stripe_api, headers)
    invoice = stripe_api.invoice(subscription["id"], amount_paid=317)
    invoice["billing_reason"] = billing_reason
    if prorated != "no":  # "yes" in the current line shape, "legacy" in the one before
        _prorated(invoice, legacy_shape=prorated == "legacy")
    answer = await deliver(billing, stripe_api.event("invoice.paid", invoice))
    assert answer.status_code == 200, answer.text
    assert await balance(db, "user_proration") == 5 + granted


# --- refunds and disputes ----------------------------------------------------------------------


async def spend(client: httpx.AsyncClient, headers: dict[str, str], times: int) -> None:
    for i in range(times):
        answer = await client.post("/v1/generations", json={"prompt": f"fox {i}"}, headers=headers)
        assert answer.status_code == 202, answer.text


async def test_a_full_refund_takes_the_pack_back_down_to_zero_once(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_refund")
    session = await bought_pack(billing, stripe_api, headers)
    await deliver(billing, stripe_api.event("checkout.session.completed", session))
    assert await balance(db, "user_refund") == 55
    await spend(billing, headers, 15)  # 40 left: fewer than the pack's 50
    charge = stripe_api.refund(stripe_api.charge_of(session["id"])["id"])
    refunded = stripe_api.event("charge.refunded", charge)
    for _ in range(2):
        assert (await deliver(billing, refunded)).status_code == 200
    again = stripe_api.event("charge.refunded", charge)  # another event, same charge
    assert (await deliver(billing, again)).status_code == 200
    assert await balance(db, "user_refund") == 0
    reversals = [e for e in await ledger(db, "user_refund") if e[0] == "purchase_reversal"]
    assert reversals == [("purchase_reversal", -40, f"reversal:{charge['id']}")]
    note = await db.fetchval(
        "SELECT note FROM credit_ledger WHERE reason = 'purchase_reversal' AND user_id = $1",
        "user_refund",
    )
    assert note == f"charge {charge['id']} refunded: took back 40 of the 50 credits bought"


async def test_a_lost_dispute_takes_the_pack_back_and_a_won_one_does_not(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_dispute")
    session = await bought_pack(billing, stripe_api, headers)
    await deliver(billing, stripe_api.event("checkout.session.completed", session))
    charge_id = stripe_api.charge_of(session["id"])["id"]
    won = stripe_api.dispute(charge_id, "won")
    assert (await deliver(billing, stripe_api.event("charge.dispute.closed", won))).is_success
    assert await balance(db, "user_dispute") == 55
    lost = stripe_api.dispute(charge_id, "lost")
    assert (await deliver(billing, stripe_api.event("charge.dispute.closed", lost))).is_success
    assert await balance(db, "user_dispute") == 5
    # A refund of the same charge afterwards takes nothing more.
    charge = stripe_api.refund(charge_id)
    assert (await deliver(billing, stripe_api.event("charge.refunded", charge))).is_success
    assert await balance(db, "user_dispute") == 5
    assert [e[0] for e in await ledger(db, "user_dispute")] == [
        "signup",
        "purchase",
        "purchase_reversal",
    ]


async def test_a_partial_refund_changes_nothing(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    session = await bought_pack(billing, stripe_api, auth_headers("user_partial"))
    await deliver(billing, stripe_api.event("checkout.session.completed", session))
    charge = stripe_api.refund(stripe_api.charge_of(session["id"])["id"], amount=100)
    assert (await deliver(billing, stripe_api.event("charge.refunded", charge))).is_success
    assert await balance(db, "user_partial") == 55


async def test_a_refund_arriving_before_its_purchase_applies_both_in_order(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    session = await bought_pack(billing, stripe_api, auth_headers("user_early"))
    charge = stripe_api.refund(stripe_api.charge_of(session["id"])["id"])
    refunded = stripe_api.event("charge.refunded", charge)
    completed = stripe_api.event("checkout.session.completed", session)
    assert (await deliver(billing, refunded)).is_success
    assert (await deliver(billing, completed)).is_success
    assert await balance(db, "user_early") == 5
    assert [e[:2] for e in await ledger(db, "user_early")] == [
        ("signup", 5),
        ("purchase", 50),
        ("purchase_reversal", -50),
    ]


async def test_a_refund_of_something_that_was_not_a_pack_is_ignored(
    billing: httpx.AsyncClient, stripe_api: StripeApiServer, db: asyncpg.Connection
) -> None:
    charge = {
        "id": "ch_elsewhere",
        "object": "charge",
        "refunded": True,
        "amount": 500,
        "amount_refunded": 500,
        "payment_intent": "pi_elsewhere",
    }
    answer = await deliver(billing, stripe_api.event("charge.refunded", charge))
    assert answer.status_code == 200
    assert (
        await db.fetchval("SELECT count(*) FROM credit_ledger WHERE reason LIKE 'purchase%'") == 0
    )
