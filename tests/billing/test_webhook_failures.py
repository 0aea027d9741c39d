"""Webhook failures and races: a failed event keeps its error and answers 500 (Stripe
retries), `atelier webhooks replay` re-runs what did not complete, and grants or reversals
racing spends never break a balance or its ledger."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx

from app.config import Settings
from app.services import credits
from tests.billing.conftest import PRODUCTS, billing_changes, deliver
from tests.billing.test_stripe_webhooks import balance, bought_pack, checkout, stored
from tests.fakes.running import running_settings, worker_env
from tests.fakes.stripe_api import SECRET_KEY, WEBHOOK_SECRET, StripeApiServer
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
ATELIER = Path(sys.executable).with_name("atelier")


async def test_a_processing_error_answers_500_keeps_the_error_and_a_redelivery_applies_it(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_fail")
    subscription = stripe_api.subscribe(await checkout(billing, headers, "pro"))
    event = stripe_api.event("customer.subscription.created", subscription)
    stripe_api.fail_with(500)  # the re-read of the subscription fails
    answer = await deliver(billing, event)
    problem = assert_problem(answer, 500)
    assert event["id"] in problem["detail"]
    row = await stored(db, event["id"])
    assert row is not None and row["processed_at"] is None
    assert row["attempts"] == 1 and "APIError" in row["error"]
    assert await db.fetchval("SELECT status FROM subscriptions WHERE user_id = 'user_fail'") == (
        "Free"
    )

    stripe_api.fail_with(None)
    again = await deliver(billing, event)  # Stripe's retry
    assert again.status_code == 200 and again.json()["outcome"] == "processed"
    row = await stored(db, event["id"])
    assert row is not None and row["processed_at"] is not None and row["error"] is None
    assert row["attempts"] == 2
    assert await db.fetchval("SELECT status FROM subscriptions WHERE user_id = 'user_fail'") == (
        "Pro"
    )


async def replay(settings: Settings, stripe_url: str, *args: str) -> tuple[int, str]:
    env = worker_env(
        settings,
        STRIPE_SECRET_KEY=SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STRIPE_API_BASE=stripe_url,
        STRIPE_MAX_NETWORK_RETRIES="0",
        BILLING_PRODUCTS=json.dumps(PRODUCTS),
    )
    process = await asyncio.create_subprocess_exec(
        str(ATELIER),
        "webhooks",
        "replay",
        *args,
        cwd=settings.data_dir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_webhooks_replay_reruns_the_stored_events_that_did_not_complete(
    billing: httpx.AsyncClient,
    billing_settings: Settings,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_replay")
    session = await bought_pack(billing, stripe_api, headers)
    completed = stripe_api.event("checkout.session.completed", session)
    assert (await deliver(billing, completed)).status_code == 200
    subscription = stripe_api.subscribe(await checkout(billing, headers, "pro"))
    sub_event = stripe_api.event("customer.subscription.created", subscription)
    charge = stripe_api.refund(stripe_api.charge_of(session["id"])["id"])
    refund_event = stripe_api.event("charge.refunded", charge)
    stripe_api.fail_with(503)
    assert_problem(await deliver(billing, sub_event), 500)
    assert_problem(await deliver(billing, refund_event), 500)

    code, out = await replay(billing_settings, stripe_api.url)  # Stripe is still down
    assert code == 1, out
    assert "0 applied, 2 failed" in out

    stripe_api.fail_with(None)
    code, out = await replay(billing_settings, stripe_api.url, "--event-id", sub_event["id"])
    assert code == 0, out
    assert f"stripe {sub_event['id']} (customer.subscription.created): processed" in out
    assert "1 applied, 0 failed" in out
    assert await db.fetchval(
        "SELECT status FROM subscriptions WHERE user_id = $1", "user_replay"
    ) == ("Pro")
    assert await balance(db, "user_replay") == 55

    code, out = await replay(billing_settings, stripe_api.url, "--provider", "stripe")
    assert code == 0, out
    assert f"stripe {refund_event['id']} (charge.refunded): processed" in out
    assert completed["id"] not in out  # it had completed: not re-run
    assert await balance(db, "user_replay") == 5
    assert await db.fetchval("SELECT count(*) FROM webhook_events WHERE processed_at IS NULL") == 0

    code, out = await replay(billing_settings, stripe_api.url)
    assert code == 0 and "0 applied, 0 failed" in out


async def test_grants_and_reversals_racing_spends_never_break_a_balance_or_its_ledger(
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    settings = make_settings(
        **billing_changes(stripe_api.url), worker_in_process=False, rate_limit_generations=""
    )
    headers = auth_headers("user_race")
    async with running_settings(settings) as client:
        session = await bought_pack(client, stripe_api, headers)
        completed = stripe_api.event("checkout.session.completed", session)

        async def spend(i: int) -> int:
            answer = await client.post(
                "/v1/generations", json={"prompt": f"race {i}"}, headers=headers
            )
            assert answer.status_code in (202, 402), answer.text
            return answer.status_code

        # The grant races 30 spends of a balance of 5: every spend sees a whole balance.
        results = await asyncio.gather(deliver(client, completed), *(spend(i) for i in range(30)))
        grant, spends = results[0], results[1:]
        assert isinstance(grant, httpx.Response) and grant.status_code == 200
        spent = spends.count(202)
        assert 5 <= spent <= 30
        assert await balance(db, "user_race") == 55 - spent

        # The reversal races 40 more spends: never below zero, and every credit accounted for.
        charge = stripe_api.refund(stripe_api.charge_of(session["id"])["id"])
        refunded = stripe_api.event("charge.refunded", charge)
        results = await asyncio.gather(
            deliver(client, refunded), *(spend(100 + i) for i in range(40))
        )
        assert isinstance(results[0], httpx.Response) and results[0].status_code == 200
        final = await balance(db, "user_race")
        assert final >= 0
    taken = await db.fetchval(
        "SELECT -delta FROM credit_ledger WHERE user_id = 'user_race' AND reason = $1",
        "purchase_reversal",
    )
    assert 0 <= taken <= 50
    bad, _ = await credits.check(db)
    assert bad == []
