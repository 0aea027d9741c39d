"""Erasing an account that pays Stripe: its subscription is cancelled before anything is
erased, and payments Stripe reports for the account afterwards are processed, not failed
for ever (they grant nothing)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx

from app.config import Settings
from tests.billing.conftest import billing_changes, deliver
from tests.billing.test_stripe_webhooks import balance, bought_pack, ledger, stored, subscribed
from tests.fakes.running import running_settings
from tests.fakes.stripe_api import StripeApiServer
from tests.identity.test_clerk_webhooks import SECRET, clerk_user
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


async def events_of(db: asyncpg.Connection) -> dict[str, tuple[Any, bool, str | None]]:
    rows = await db.fetch("SELECT event_id, payload, processed_at, error FROM webhook_events")
    return {
        r["event_id"]: (json.loads(r["payload"]), r["processed_at"] is not None, r["error"])
        for r in rows
    }


async def test_erasure_scrubs_what_stored_webhook_events_said_about_the_user(
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    """Clerk's events about the user (its email) and Stripe's about its customer (its
    payments) keep only `{"erased": true}`, processed, even one that had failed; another
    user's events are left as they were."""
    settings = make_settings(
        **billing_changes(stripe_api.url), clerk_webhook_secret=SECRET, worker_in_process=False
    )
    gone, kept = "user_scrubbed", "user_not_scrubbed"
    async with running_settings(settings) as client:
        for user in (gone, kept):
            created = {"type": "user.created", "data": clerk_user(user, f"{user}@example.test")}
            assert (await clerk_deliver(client, created, msg_id=f"msg_{user}")).status_code == 200
            session = await bought_pack(client, stripe_api, auth_headers(user))
            paid = stripe_api.event("checkout.session.completed", session)
            assert (await deliver(client, paid)).status_code == 200
        # One of the user's events failed (an unknown product) and waits for a replay.
        failing = await bought_pack(client, stripe_api, auth_headers(gone))
        failing["metadata"]["product_id"] = "no_such_product"
        failed = stripe_api.event("checkout.session.completed", failing)
        assert_problem(await deliver(client, failed), 500)
        before = await events_of(db)
        assert (await client.delete("/v1/me", headers=auth_headers(gone))).status_code == 204

    after = await events_of(db)
    changed = {event_id for event_id in after if after[event_id] != before[event_id]}
    assert changed == {
        event_id for event_id, (payload, _, _) in before.items() if gone in json.dumps(payload)
    }
    assert len(changed) == 3
    assert all(after[event_id] == ({"erased": True}, True, None) for event_id in changed)
    assert f"msg_{kept}" not in changed and any(kept in json.dumps(p) for p, _, _ in after.values())


async def test_the_events_of_an_erased_user_are_found_by_index(db: asyncpg.Connection) -> None:
    """The statement `scrub_events` runs uses the two indexes of migration 20261130006000, so
    an erasure does not read every event ever stored."""
    await db.execute("SET enable_seqscan = off")
    plan = "\n".join(
        r[0]
        for r in await db.fetch(
            "EXPLAIN UPDATE webhook_events SET payload = '{}'::jsonb"
            " WHERE (provider = 'clerk' AND payload #>> '{data,id}' = 'u'"
            "        AND type <> 'user.deleted')"
            "    OR (provider = 'stripe' AND payload #>> '{data,object,customer}' ="
            "        (SELECT stripe_customer_id FROM subscriptions WHERE user_id = 'u'))"
        )
    )
    assert "webhook_events_clerk_user_idx" in plan, plan
    assert "webhook_events_stripe_customer_idx" in plan, plan
