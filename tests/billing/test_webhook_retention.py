"""Stored incoming webhook events keep their payload for WEBHOOK_EVENT_PAYLOAD_DAYS once
processed; then only their id (which still turns a redelivery away) and `{"expired": true}`.
Events that did not complete keep theirs, for `atelier webhooks replay`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.db import webhook_events
from app.services import webhooks
from app.services.providers.local import LocalProvider
from app.services.storage.base import Storage
from app.services.worker import Worker
from tests.billing.conftest import deliver
from tests.billing.test_stripe_webhooks import balance, bought_pack, ledger
from tests.fakes.stripe_api import StripeApiServer
from tests.gallery.test_page_plans import generic_plan
from tests.support.polling import wait_until
from tests.worker.conftest import worker_running

Headers = Callable[..., dict[str, str]]
EXPIRED = {"expired": True}


async def payload(db: asyncpg.Connection, event_id: str) -> Any:
    return json.loads(
        await db.fetchval("SELECT payload FROM webhook_events WHERE event_id = $1", event_id)
    )


async def age(db: asyncpg.Connection, event_id: str, days: int) -> None:
    """As if the event had arrived, and been processed (if it was), `days` ago."""
    await db.execute(
        """
        UPDATE webhook_events SET received_at = received_at - make_interval(days => $2),
            processed_at = processed_at - make_interval(days => $2)
        WHERE event_id = $1
        """,
        event_id,
        days,
    )


async def store(db: asyncpg.Connection, event_id: str, *, processed: bool) -> None:
    await db.execute(
        """
        INSERT INTO webhook_events (provider, event_id, type, payload, processed_at)
        VALUES ('clerk', $1, 'user.updated', $2, CASE WHEN $3 THEN now() END)
        """,
        event_id,
        json.dumps({"type": "user.updated", "data": {"id": "user_x", "email": "x@example.com"}}),
        processed,
    )


async def test_a_processed_event_keeps_only_its_id_after_the_retention_and_is_not_applied_again(
    billing: httpx.AsyncClient,
    billing_settings: Settings,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
) -> None:
    """A pack's purchase, processed 31 days ago, loses its payload (the buyer's email and
    address in Stripe's session); Stripe delivering it once more grants nothing again.
    One processed yesterday, one that failed long ago and one about an erased account keep
    what they have."""
    user = "user_retention"
    purchase = stripe_api.event(
        "checkout.session.completed", await bought_pack(billing, stripe_api, auth_headers(user))
    )
    assert (await deliver(billing, purchase)).status_code == 200
    granted = await balance(db, user)
    await age(db, purchase["id"], 31)
    await store(db, "evt_recent", processed=True)
    await age(db, "evt_recent", 1)
    await store(db, "evt_failed", processed=False)
    await age(db, "evt_failed", 90)
    await store(db, "evt_erased", processed=True)
    await webhook_events.scrub(db, "clerk", "evt_erased")
    await age(db, "evt_erased", 90)
    kept = {e: await payload(db, e) for e in ("evt_recent", "evt_failed", "evt_erased")}

    assert await webhooks.expire_payloads(pool, billing_settings.webhook_event_payload_days) == 1
    assert await payload(db, purchase["id"]) == EXPIRED
    assert {e: await payload(db, e) for e in kept} == kept
    assert await webhooks.expire_payloads(pool, 30) == 0  # nothing left to do

    again = await deliver(billing, purchase)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate", again.text
    assert await balance(db, user) == granted
    assert [reason for reason, _, _ in await ledger(db, user)].count("purchase") == 1


async def test_the_sweep_goes_in_batches_and_zero_days_keeps_every_payload(
    db: asyncpg.Connection, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(5):
        await store(db, f"evt_old_{n}", processed=True)
        await age(db, f"evt_old_{n}", 40)
    assert await webhooks.expire_payloads(pool, 0) == 0
    assert await payload(db, "evt_old_0") != EXPIRED

    monkeypatch.setattr(webhooks, "EXPIRE_BATCH", 2)
    assert await webhooks.expire_payloads(pool, 30) == 5
    assert [await payload(db, f"evt_old_{n}") for n in range(5)] == [EXPIRED] * 5


async def test_a_worker_sweeps_as_it_starts(
    make_settings: Callable[..., Settings],
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    storage: Storage,
) -> None:
    await store(db, "evt_old", processed=True)
    await age(db, "evt_old", 8)
    settings = make_settings(webhook_event_payload_days=7)
    async with worker_running(Worker(settings, pool, LocalProvider(), storage)):

        async def swept() -> bool:
            return bool(await payload(db, "evt_old") == EXPIRED)

        await wait_until(swept, "the worker dropped the old payload")


async def test_the_sweep_reads_only_events_that_still_hold_a_payload(
    db: asyncpg.Connection,
) -> None:
    """The statement the sweep sends, planned generically as asyncpg's prepared statement
    ends up, finds its rows by migration 20261201000000's index and changes them by their
    ctid (sequential scans off: the table is small here)."""
    await db.execute("SET enable_seqscan = off")
    _, plan = await generic_plan(db, webhook_events.expire_payloads(db, 30, 1000))
    scan = [p for p in plan["Plans"] if p["Parent Relationship"] == "Outer"]
    assert [p["Node Type"] for p in scan] == ["Tid Scan"], plan
    assert "webhook_events_payload_kept_idx" in json.dumps(plan), plan
    assert "Seq Scan" not in json.dumps(plan), plan
