"""Erasing an account that pays Stripe: its Stripe customer is deleted before anything is
erased (which cancels every subscription it has), and what Stripe reports about the account
afterwards is processed, not failed for ever (it grants nothing)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.db import webhook_events
from app.services import accounts
from tests.billing.conftest import billing_changes, deliver
from tests.billing.test_stripe_webhooks import (
    balance,
    bought_pack,
    checkout,
    ledger,
    stored,
    subscribed,
)
from tests.fakes.running import running_settings
from tests.fakes.stripe_api import SECRET_KEY, StripeApiServer
from tests.gallery.test_page_plans import generic_plan
from tests.identity.test_clerk_webhooks import SECRET, clerk_user
from tests.identity.test_clerk_webhooks import deliver as clerk_deliver
from tests.support.polling import wait_until
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def billing_and_clerk(
    make_settings: Callable[..., Settings], stripe_api: StripeApiServer
) -> Settings:
    return make_settings(
        **billing_changes(stripe_api.url), clerk_webhook_secret=SECRET, worker_in_process=False
    )


@pytest.fixture
async def client(billing_and_clerk: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_settings(billing_and_clerk) as client:
        yield client


async def subscribed_row(
    client: httpx.AsyncClient, stripe_api: StripeApiServer, headers: dict[str, str]
) -> dict[str, Any]:
    """A Pro subscription at Stripe, and the shared row that names it (its event delivered)."""
    subscription = await subscribed(client, stripe_api, headers)
    created = stripe_api.event("customer.subscription.created", subscription)
    assert (await deliver(client, created)).status_code == 200
    return subscription


def customer_deletions(stripe_api: StripeApiServer, customer_id: str) -> int:
    return len(stripe_api.requests_to("DELETE", f"/v1/customers/{customer_id}"))


async def users_row(db: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM users WHERE id = $1", user_id)


async def test_erasing_an_account_deletes_its_stripe_customer_which_ends_every_subscription(
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    """One subscription the shared row names, and one it never heard of (its checkout was
    paid, its event not delivered yet): both end. Erasing again (Clerk's user.deleted after
    the user's own DELETE /v1/me) asks Stripe nothing more."""
    user = "user_erased_pro"
    headers = auth_headers(user)
    unheard = stripe_api.subscribe(await checkout(client, headers, "pro"))
    named = await subscribed_row(client, stripe_api, headers)
    customer = named["customer"]
    assert unheard["customer"] == customer

    assert (await client.delete("/v1/me", headers=headers)).status_code == 204
    for subscription in (unheard, named):
        assert stripe_api.subscriptions[subscription["id"]]["status"] == "canceled"
    assert stripe_api.customers[customer].get("deleted") is True
    assert await db.fetchval("SELECT count(*) FROM subscriptions WHERE user_id = $1", user) == 0

    event = {"type": "user.deleted", "data": {"id": user, "object": "user", "deleted": True}}
    assert (await clerk_deliver(client, event)).status_code == 200
    assert customer_deletions(stripe_api, customer) == 1


async def test_erasure_closes_the_accounts_checkouts_and_no_one_elses(
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two checkouts left open in the app and 101 more for the customer (more than one page
    of Stripe's list) are expired; of two paid with a delayed method (`unpaid` until the
    money arrives) the one still waiting for the buyer is cancelled and the one already
    processing is logged to refund; a paid one and another user's open one stay as they
    were."""
    user = "user_erased_open_checkouts"
    headers = auth_headers(user)
    paid = stripe_api.pay(await checkout(client, headers))
    waiting = stripe_api.pay_later(await checkout(client, headers))
    processing = stripe_api.pay_later(await checkout(client, headers), status="processing")
    pack, pro = await checkout(client, headers), await checkout(client, headers, "pro")
    someone_elses = await checkout(client, auth_headers("user_not_erased"))
    customer = paid["customer"]
    async with httpx.AsyncClient(
        base_url=stripe_api.url, headers={"Authorization": f"Bearer {SECRET_KEY}"}
    ) as dashboard:
        for _ in range(101):
            made = await dashboard.post(
                "/v1/checkout/sessions",
                data={
                    "mode": "payment",
                    "customer": customer,
                    "line_items[0][price]": stripe_api.sessions[pack]["_price"],
                    "success_url": "https://example.test/done",
                },
            )
            assert made.status_code == 200, made.text
    before = {s["id"] for s in (paid, waiting, processing)} | {pack, pro, someone_elses}
    others = [s for s in stripe_api.sessions if s not in before]
    assert len(others) == 101

    assert (await client.delete("/v1/me", headers=headers)).status_code == 204
    for session_id in (pack, pro, *others):
        assert stripe_api.sessions[session_id]["status"] == "expired", session_id
    assert stripe_api.sessions[someone_elses]["status"] == "open"
    assert stripe_api.sessions[paid["id"]]["status"] == "complete"
    intents = stripe_api.payment_intents
    assert intents[waiting["payment_intent"]]["status"] == "canceled"
    assert intents[processing["payment_intent"]]["status"] == "processing"
    assert any(
        r.levelname == "ERROR" and processing["payment_intent"] in r.getMessage()
        for r in caplog.records
    )
    listed = stripe_api.requests_to("GET", "/v1/checkout/sessions")
    assert [(q["customer"], q["status"]) for q in listed] == [
        (customer, "open"),
        (customer, "open"),  # the second page
        (customer, "complete"),
    ]
    assert stripe_api.customers[customer].get("deleted") is True


async def test_a_checkout_stripe_will_not_expire_stops_the_erasure(
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    user = "user_erased_unexpired"
    headers = auth_headers(user)
    session_id = await checkout(client, headers)
    customer = stripe_api.sessions[session_id]["customer"]
    stripe_api.fail_with(400, f"/v1/checkout/sessions/{session_id}/expire")
    refused = await client.delete("/v1/me", headers=headers)
    stripe_api.fail_with(None)
    assert "expire an open checkout" in assert_problem(refused, 503)["detail"]
    row = await users_row(db, user)
    assert row is not None and row["erased_at"] is None
    assert stripe_api.sessions[session_id]["status"] == "open"
    assert not stripe_api.customers[customer].get("deleted")

    assert (await client.delete("/v1/me", headers=headers)).status_code == 204
    assert stripe_api.sessions[session_id]["status"] == "expired"


@pytest.mark.parametrize(
    ("status", "says"), [(500, "Stripe is unavailable"), (400, "Stripe refused")]
)
async def test_an_erasure_stripe_does_not_confirm_erases_nothing_and_a_retry_completes_it(
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
    status: int,
    says: str,
) -> None:
    """An outage (500) or a refusal (400, which is not "no such customer"): a 503 that says
    which, and the account is left as it was."""
    user = f"user_erased_{status}"
    headers = auth_headers(user)
    subscription = await subscribed_row(client, stripe_api, headers)
    before = await users_row(db, user)
    stripe_api.fail_with(status)
    refused = await client.delete("/v1/me", headers=headers)
    stripe_api.fail_with(None)
    assert_problem(refused, 503)
    assert says in refused.json()["detail"]
    assert await users_row(db, user) == before
    assert (await client.get("/v1/me", headers=headers)).json()["subscription"]["status"] == "Pro"
    assert stripe_api.subscriptions[subscription["id"]]["status"] == "active"

    assert (await client.delete("/v1/me", headers=headers)).status_code == 204
    assert stripe_api.subscriptions[subscription["id"]]["status"] == "canceled"


async def test_a_customer_already_deleted_at_stripe_does_not_block_erasure(
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    user = "user_erased_customer_gone"
    headers = auth_headers(user)
    subscription = await subscribed_row(client, stripe_api, headers)
    # Deleted in Stripe's dashboard, say: Stripe then answers 404 `resource_missing`.
    async with httpx.AsyncClient() as dashboard:
        gone = await dashboard.delete(
            f"{stripe_api.url}/v1/customers/{subscription['customer']}",
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
        )
    assert gone.status_code == 200, gone.text
    assert (await client.delete("/v1/me", headers=headers)).status_code == 204
    assert customer_deletions(stripe_api, subscription["customer"]) == 2
    row = await users_row(db, user)
    assert row is not None and row["erased_at"] is not None


async def test_an_empty_customer_id_in_the_shared_row_is_no_customer(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """The mobile app may leave '' where no customer is: nothing to delete, nothing raced."""
    user = "user_erased_empty_customer"
    headers = auth_headers(user)
    assert (await client.get("/v1/me", headers=headers)).status_code == 200
    await db.execute(
        "INSERT INTO subscriptions (user_id, stripe_customer_id) VALUES ($1, '')", user
    )
    assert (await client.delete("/v1/me", headers=headers)).status_code == 204


async def test_without_stripe_configured_an_erasure_goes_on_and_says_what_is_left(
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The shared row names a Stripe customer (another deployment, or the mobile app, made
    it) but this one has no Stripe key: the erasure cannot delete it, and must not be stuck
    for ever; it goes on and logs the customer to delete by hand."""
    user = "user_erased_no_stripe"
    headers = auth_headers(user)
    async with running_settings(make_settings(worker_in_process=False)) as client:
        assert (await client.get("/v1/me", headers=headers)).status_code == 200
        await db.execute(
            "INSERT INTO subscriptions (user_id, stripe_customer_id) VALUES ($1, 'cus_elsewhere')",
            user,
        )
        assert (await client.delete("/v1/me", headers=headers)).status_code == 204
    row = await users_row(db, user)
    assert row is not None and row["erased_at"] is not None
    assert any("cus_elsewhere" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


async def test_what_stripe_reports_for_an_erased_account_is_processed_and_grants_nothing(
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    """A pack paid and a plan invoice paid just before the account was erased, and the
    subscription's end and the customer's deletion that the erasure caused: Stripe's events
    arrive after. Failing them would have Stripe retry them for days and leave them failed
    for ever; they are processed (a paid one with a warning to refund it), granting nothing,
    and keep nothing of what they said."""
    user = "user_erased_paying"
    headers = auth_headers(user)
    session = await bought_pack(client, stripe_api, headers)
    subscription = await subscribed_row(client, stripe_api, headers)
    invoice = stripe_api.invoice(subscription["id"])
    customer = dict(stripe_api.customers[subscription["customer"]])
    assert (await client.delete("/v1/me", headers=headers)).status_code == 204
    ended = stripe_api.subscriptions[subscription["id"]]

    for event in (
        stripe_api.event("checkout.session.completed", session),
        stripe_api.event("invoice.paid", invoice),
        stripe_api.event("customer.subscription.deleted", ended),
        stripe_api.event("customer.deleted", customer),  # with the email it had
    ):
        answer = await deliver(client, event)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "processed"
        row = await stored(db, event["id"])
        assert row is not None and row["processed_at"] is not None and row["error"] is None
        # What it said about the erased account is not kept either.
        payload = await db.fetchval(
            "SELECT payload FROM webhook_events WHERE event_id = $1", event["id"]
        )
        assert json.loads(payload) == {"erased": True}
    assert await balance(db, user) == 0
    assert [reason for reason, _, _ in await ledger(db, user)] == ["signup", "admin"]


async def test_clerks_user_deleted_while_stripe_is_down_fails_and_its_redelivery_erases(
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    user = "user_erased_by_clerk"
    headers = auth_headers(user)
    event = {"type": "user.deleted", "data": {"id": user, "object": "user", "deleted": True}}
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
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    """Clerk's events about the user (its email) and Stripe's about its customer (its
    payments) keep only `{"erased": true}`, processed, even one that had failed; another
    user's events are left as they were."""
    gone, kept = "user_scrubbed", "user_not_scrubbed"
    for user in (gone, kept):
        created = {"type": "user.created", "data": clerk_user(user, f"{user}@example.test")}
        assert (await clerk_deliver(client, created, msg_id=f"msg_{user}")).status_code == 200
        session = await bought_pack(client, stripe_api, auth_headers(user))
        paid = stripe_api.event("checkout.session.completed", session)
        assert (await deliver(client, paid)).status_code == 200
        # A customer's own event: its object is the customer (with the email it had).
        customer = dict(stripe_api.customers[session["customer"]], email=f"{user}@example.test")
        updated = stripe_api.event("customer.updated", customer)
        assert (await deliver(client, updated)).status_code == 200
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
    assert len(changed) == 4
    assert all(after[event_id] == ({"erased": True}, True, None) for event_id in changed)
    assert f"msg_{kept}" not in changed and any(kept in json.dumps(p) for p, _, _ in after.values())


async def test_the_events_of_an_erased_user_are_found_by_index(db: asyncpg.Connection) -> None:
    """The statement `scrub_about_user` sends, planned generically as asyncpg's prepared
    statement ends up, uses the three indexes of migration 20261130006000, so an erasure does
    not read every event ever stored (the table is small here: sequential scans are off)."""
    await db.execute("SET enable_seqscan = off")
    _, plan = await generic_plan(db, webhook_events.scrub_about_user(db, "user_x", "cus_x"))
    used = json.dumps(plan)
    assert "webhook_events_clerk_user_idx" in used, plan
    assert "webhook_events_stripe_customer_idx" in used, plan
    assert "webhook_events_stripe_object_idx" in used, plan


async def test_a_customer_made_while_the_account_is_erased_stops_the_erasure(
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    """A first checkout records a new Stripe customer after the erasure looked the old one
    up (and while Stripe deletes it): no row would name the new one once the erasure is
    done, so the erasure is refused (409) and changes nothing; the next one deletes it."""
    user = "user_erased_racing"
    headers = auth_headers(user)
    subscription = await subscribed_row(client, stripe_api, headers)
    before = await users_row(db, user)
    stripe_api.hold_requests(1.0)
    erasing = asyncio.create_task(client.delete("/v1/me", headers=headers))
    await wait_until(
        lambda: customer_deletions(stripe_api, subscription["customer"]) == 1,
        "the erasure to ask Stripe to delete the customer",
    )
    await db.execute(
        "UPDATE subscriptions SET stripe_customer_id = 'cus_made_meanwhile' WHERE user_id = $1",
        user,
    )
    refused = await erasing
    stripe_api.hold_requests(0)
    assert_problem(refused, 409)
    assert await users_row(db, user) == before
    assert (await client.delete("/v1/me", headers=headers)).status_code == 204
    assert customer_deletions(stripe_api, "cus_made_meanwhile") == 1


async def test_the_subscriptions_end_arriving_during_the_erasure_waits_for_it_and_is_ignored(
    client: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deleting the customer makes Stripe send `customer.subscription.deleted` at once, and
    it may arrive while the erasure's transaction runs: it waits for that transaction (the
    user's row is locked) and then finds the account erased, a 200, rather than a write
    refused for an erased id (a 500 until Stripe's retry)."""
    user = "user_erased_event_racing"
    headers = auth_headers(user)
    subscription = await subscribed_row(client, stripe_api, headers)
    inside, go_on = asyncio.Event(), asyncio.Event()
    check = accounts._no_new_customer

    async def paused(*args: Any) -> None:  # inside the erasure's transaction, row locked
        await check(*args)
        inside.set()
        await go_on.wait()

    monkeypatch.setattr(accounts, "_no_new_customer", paused)
    erasing = asyncio.create_task(client.delete("/v1/me", headers=headers))
    await asyncio.wait_for(inside.wait(), 30)
    ended = stripe_api.event(
        "customer.subscription.deleted", stripe_api.subscriptions[subscription["id"]]
    )
    delivering = asyncio.create_task(deliver(client, ended))

    async def waiting_on_a_lock() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )

    await wait_until(waiting_on_a_lock, "the event to wait for the erasure's transaction")
    go_on.set()
    assert (await erasing).status_code == 204
    answer = await delivering
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "processed"
    assert await db.fetchval("SELECT count(*) FROM subscriptions WHERE user_id = $1", user) == 0
