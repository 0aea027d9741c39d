"""Erasing an account that pays Stripe: its subscription is cancelled before anything is
erased, and payments Stripe reports for the account afterwards are processed, not failed
for ever (they grant nothing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx

from app.config import Settings
from tests.billing.conftest import billing_changes, deliver
from tests.billing.test_stripe_webhooks import balance, bought_pack, ledger, stored, subscribed
from tests.fakes.running import running_settings
from tests.fakes.stripe_api import StripeApiServer
from tests.identity.test_clerk_webhooks import SECRET
from tests.identity.test_clerk_webhooks import deliver as clerk_deliver
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]


async def subscribed_row(
    client: httpx.AsyncClient, stripe_api: StripeApiServer, headers: dict[str, str]
) -> dict[str, Any]:
    """A Pro subscription at Stripe, and the shared row that names it (its event delivered)."""
    subscription = await subscribed(client, stripe_api, headers)
    created = stripe_api.event("customer.subscription.created", subscription)
    assert (await deliver(client, created)).status_code == 200
    return subscription


def cancellations(stripe_api: StripeApiServer, subscription_id: str) -> int:
    return len(stripe_api.requests_to("DELETE", f"/v1/subscriptions/{subscription_id}"))


async def test_erasing_an_account_cancels_its_stripe_subscription_first(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_erased_pro")
    subscription = await subscribed_row(billing, stripe_api, headers)
    assert (await billing.delete("/v1/me", headers=headers)).status_code == 204
    assert stripe_api.subscriptions[subscription["id"]]["status"] == "canceled"
    assert cancellations(stripe_api, subscription["id"]) == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM subscriptions WHERE user_id = $1", "user_erased_pro"
        )
        == 0
    )
    # Erasing again (a retried Clerk event, say) asks Stripe nothing more.
    assert (await billing.delete("/v1/me", headers=headers)).status_code == 401
    assert cancellations(stripe_api, subscription["id"]) == 1


async def test_an_erasure_stripe_cannot_confirm_erases_nothing_and_a_retry_completes_it(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_erased_outage")
    subscription = await subscribed_row(billing, stripe_api, headers)
    before = await db.fetchrow("SELECT * FROM users WHERE id = $1", "user_erased_outage")
    stripe_api.fail_with(500)
    assert_problem(await billing.delete("/v1/me", headers=headers), 503)
    stripe_api.fail_with(None)
    assert await db.fetchrow("SELECT * FROM users WHERE id = $1", "user_erased_outage") == before
    assert (await billing.get("/v1/me", headers=headers)).json()["subscription"]["status"] == "Pro"
    assert stripe_api.subscriptions[subscription["id"]]["status"] == "active"

    assert (await billing.delete("/v1/me", headers=headers)).status_code == 204
    assert stripe_api.subscriptions[subscription["id"]]["status"] == "canceled"


async def test_a_subscription_that_ended_before_its_row_heard_does_not_block_erasure(
    billing: httpx.AsyncClient, auth_headers: Headers, stripe_api: StripeApiServer
) -> None:
    """The row still says active; Stripe refuses to cancel a cancelled subscription (400),
    and asked again says it has ended: the erasure goes on."""
    headers = auth_headers("user_erased_ended")
    subscription = await subscribed_row(billing, stripe_api, headers)
    stripe_api.update_subscription(subscription["id"], status="canceled")
    assert (await billing.delete("/v1/me", headers=headers)).status_code == 204
    assert cancellations(stripe_api, subscription["id"]) == 1


async def test_payments_reported_for_an_erased_account_are_processed_and_grant_nothing(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    """A pack paid, and a plan invoice paid, just before the account was erased: Stripe's
    events arrive after. Failing them would have Stripe retry them for days and leave them
    failed for ever; they are processed (with a warning to refund), granting nothing."""
    user = "user_erased_paying"
    headers = auth_headers(user)
    session = await bought_pack(billing, stripe_api, headers)
    subscription = await subscribed_row(billing, stripe_api, headers)
    invoice = stripe_api.invoice(subscription["id"])
    assert (await billing.delete("/v1/me", headers=headers)).status_code == 204

    for event in (
        stripe_api.event("checkout.session.completed", session),
        stripe_api.event("invoice.paid", invoice),
    ):
        answer = await deliver(billing, event)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "processed"
        row = await stored(db, event["id"])
        assert row is not None and row["processed_at"] is not None and row["error"] is None
    assert await balance(db, user) == 0
    assert [reason for reason, _, _ in await ledger(db, user)] == ["signup", "admin"]


async def test_clerks_user_deleted_while_stripe_is_down_fails_and_its_redelivery_erases(
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    settings = make_settings(
        **billing_changes(stripe_api.url), clerk_webhook_secret=SECRET, worker_in_process=False
    )
    user = "user_erased_by_clerk"
    headers = auth_headers(user)
    event = {"type": "user.deleted", "data": {"id": user, "object": "user", "deleted": True}}
    async with running_settings(settings) as client:
        subscription = await subscribed_row(client, stripe_api, headers)
        stripe_api.fail_with(503)
        assert_problem(await clerk_deliver(client, event, msg_id="msg_erase_once"), 500)
        stripe_api.fail_with(None)
        assert await db.fetchval("SELECT erased_at FROM users WHERE id = $1", user) is None
        assert (await client.get("/v1/me", headers=headers)).status_code == 200

        redelivered = await clerk_deliver(client, event, msg_id="msg_erase_once")
        assert redelivered.status_code == 200, redelivered.text
    assert await db.fetchval("SELECT erased_at FROM users WHERE id = $1", user) is not None
    assert stripe_api.subscriptions[subscription["id"]]["status"] == "canceled"
