"""Outgoing webhooks (issue 10, point 6): signed deliveries of job.completed / job.failed to
a real loopback receiver, sent by the worker process, retried with backoff, each attempt
listed."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import asyncpg
import httpx
import pytest
from jsonschema import Draft202012Validator
from standardwebhooks import Webhook
from standardwebhooks.exceptions import WebhookVerificationError

from app.config import Settings
from app.db import outgoing as outgoing_db
from app.services import outgoing, webhook_urls
from app.services.providers.local import LocalProvider
from app.services.storage.base import Storage
from app.services.worker import Worker
from tests.fakes.running import running_settings
from tests.fakes.tls import TlsServer, ca_file
from tests.fakes.webhook_receiver import Received, WebhookReceiver
from tests.support.locks import until_a_lock_wait
from tests.support.polling import DEADLINE_SECONDS, wait_until
from tests.support.problems import assert_problem
from tests.worker.conftest import worker_running

Headers = Callable[..., dict[str, str]]
ALICE, BOB = "user_hooks_alice", "user_hooks_bob"


@pytest.fixture
def hook_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """A loopback receiver is a private address: allowed here, and polled often."""

    def make(**changes: object) -> Settings:
        fields: dict[str, object] = {
            "webhooks_allow_private": True,
            "env": "development",  # http (to loopback) is allowed only in development
            "webhook_poll_seconds": 0.05,
        }
        fields.update(changes)
        return make_settings(**fields)

    return make


async def register(
    client: httpx.AsyncClient, headers: dict[str, str], url: str, events: list[str]
) -> dict[str, Any]:
    response = await client.post(
        "/v1/webhook-endpoints", json={"url": url, "events": events}, headers=headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    location = response.headers["Location"]
    assert location == f"/v1/webhook-endpoints/{body['id']}"
    # What the endpoint's own address shows: the same, without the secret.
    shown = await client.get(location, headers=headers)
    assert shown.status_code == 200, shown.text
    assert shown.json() == {k: v for k, v in body.items() if k != "secret"}
    return body


async def finished_job(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.post(
        "/v1/generations", json={"prompt": "a fox"}, headers={**headers, "Prefer": "wait=10"}
    )
    assert response.status_code in (200, 201), response.text
    job: dict[str, Any] = response.json()
    assert job["status"] in ("completed", "failed"), job
    return job


async def received(receiver: WebhookReceiver, count: int) -> list[Received]:
    await wait_until(lambda: len(receiver.received) >= count, f"{count} deliveries")
    return receiver.received


def verified(secret: str, message: Received) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(message.body, message.headers)
    return payload


async def assert_as_documented(client: httpx.AsyncClient, message: Received) -> None:
    """The delivery is what the API document's `webhooks` entry for its type says: the body
    under its schema, each documented header present and valid under its own."""
    spec = (await client.get("/openapi.json")).json()
    body = json.loads(message.body)
    operation = spec["webhooks"][body["type"]]["post"]
    root = {"components": spec["components"]}
    checker = Draft202012Validator.FORMAT_CHECKER
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, **root}, format_checker=checker).validate(body)
    documented = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert set(body) == set(documented["properties"])  # nothing more than the document says
    assert message.headers["content-type"] == "application/json"
    headers = [p for p in operation["parameters"] if p["in"] == "header"]
    assert {p["name"] for p in headers} == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    for parameter in headers:
        value = message.headers[parameter["name"]]
        Draft202012Validator(parameter["schema"], format_checker=checker).validate(value)


async def deliveries(
    client: httpx.AsyncClient, headers: dict[str, str], endpoint_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def recorded(
    client: httpx.AsyncClient, headers: dict[str, str], endpoint_id: str
) -> list[dict[str, Any]]:
    """The endpoint's deliveries once none is `pending` any more (each attempt recorded)."""
    listed: list[dict[str, Any]] = []

    async def settled() -> bool:
        listed[:] = await deliveries(client, headers, endpoint_id)
        return bool(listed) and all(d["status"] != "pending" for d in listed)

    await wait_until(settled, "the attempts to be recorded")
    return listed


async def make_due(db: asyncpg.Connection) -> None:
    await db.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE status = 'pending'"
    )


async def test_a_completed_job_is_delivered_signed_with_the_job_as_get_shows_it(
    hook_settings: Callable[..., Settings], auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    with WebhookReceiver() as receiver:
        async with running_settings(hook_settings()) as client:
            endpoint = await register(client, alice, receiver.url, ["job.completed"])
            assert endpoint["secret"].startswith("whsec_")
            job = await finished_job(client, alice)
            assert job["status"] == "completed"
            (message,) = await received(receiver, 1)
            payload = verified(endpoint["secret"], message)
            shown = (await client.get(f"/v1/jobs/{job['id']}", headers=alice)).json()

            assert payload["type"] == "job.completed" and "timestamp" in payload
            # The image link is signed with its own expiry each time it is shown.
            sent_url, shown_url = payload["data"]["image"].pop("url"), shown["image"].pop("url")
            assert sent_url.split("?")[0] == shown_url.split("?")[0]
            assert payload["data"] == shown
            await assert_as_documented(client, message)
            assert message.headers["user-agent"] == outgoing.USER_AGENT
            listed = await recorded(client, alice, endpoint["id"])
            assert [(d["type"], d["status"]) for d in listed] == [("job.completed", "delivered")]
            assert [a["status_code"] for a in listed[0]["attempts"]] == [200]
            assert listed[0]["id"] == message.headers["webhook-id"]


async def test_a_failing_endpoint_is_retried_with_backoff_and_each_attempt_listed(
    hook_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    alice = auth_headers(ALICE)
    with WebhookReceiver(500) as receiver:
        async with running_settings(hook_settings()) as client:
            endpoint = await register(client, alice, receiver.url, ["job.completed"])
            await finished_job(client, alice)
            await received(receiver, 1)

            async def first_recorded() -> bool:
                found = await deliveries(client, alice, endpoint["id"])
                return bool(found) and len(found[0]["attempts"]) == 1

            await wait_until(first_recorded, "the failed attempt to be recorded")
            (pending,) = await deliveries(client, alice, endpoint["id"])
            assert pending["status"] == "pending"
            assert pending["attempts"][0]["status_code"] == 500
            wait = await db.fetchval(
                """SELECT d.next_attempt_at - a.attempted_at FROM webhook_deliveries d
                   JOIN webhook_attempts a ON a.delivery_id = d.id"""
            )
            assert timedelta(seconds=4) < wait <= timedelta(seconds=6)  # the first backoff: 5 s
            assert len(receiver.received) == 1  # not before it is due

            await make_due(db)
            first, second = await received(receiver, 2)
            assert first.headers["webhook-id"] == second.headers["webhook-id"]
            assert verified(endpoint["secret"], second) == verified(endpoint["secret"], first)

            async def delivered() -> bool:
                (found,) = await deliveries(client, alice, endpoint["id"])
                return bool(found["status"] == "delivered")

            await wait_until(delivered, "the delivery to succeed")
            (done,) = await deliveries(client, alice, endpoint["id"])
            assert [a["status_code"] for a in done["attempts"]] == [500, 200]
            assert done["delivered_at"] is not None and done["next_attempt_at"] is None


async def test_a_retry_carries_the_job_as_it_is_then_under_the_first_events_time(
    hook_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """`data` is read again for every attempt (a retry hours later gets an image URL signed
    then, not one that expired; null once the job's row is gone); the event's id, type and
    timestamp (when the delivery was queued, as the job ended) stay those of the first."""
    alice = auth_headers(ALICE)
    with WebhookReceiver(500, 500) as receiver:
        async with running_settings(hook_settings()) as client:
            endpoint = await register(client, alice, receiver.url, ["job.completed"])
            job = await finished_job(client, alice)
            (first,) = await received(receiver, 1)
            sent = verified(endpoint["secret"], first)
            assert sent["data"]["image"]["url"] == job["image"]["url"]
            await wait_until(lambda: _attempts(db, 1), "the failed attempt to be recorded")
            # Meanwhile the image is deleted: the job shows none any more.
            image = job["image"]["id"]
            assert (await client.delete(f"/v1/images/{image}", headers=alice)).status_code == 204
            shown = (await client.get(f"/v1/jobs/{job['id']}", headers=alice)).json()
            assert shown["image"] is None

            await make_due(db)
            _, second = await received(receiver, 2)
            resent = verified(endpoint["secret"], second)
            assert resent["data"] == shown
            assert (resent["type"], resent["timestamp"]) == (sent["type"], sent["timestamp"])
            assert second.headers["webhook-id"] == first.headers["webhook-id"]
            queued = await db.fetchval(
                "SELECT created_at FROM webhook_deliveries WHERE id = $1",
                uuid.UUID(first.headers["webhook-id"]),
            )
            assert datetime.fromisoformat(sent["timestamp"]) == queued

            # The job's row is deleted (the mobile app may): the next attempt says so.
            await wait_until(lambda: _attempts(db, 2), "the second attempt to be recorded")
            await db.execute(
                "DELETE FROM image_generation_jobs WHERE id = $1", uuid.UUID(job["id"])
            )
            await make_due(db)
            _, _, third = await received(receiver, 3)
            assert verified(endpoint["secret"], third)["data"] is None


async def test_a_delivery_gives_up_after_the_last_backoff(
    hook_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    alice = auth_headers(ALICE)
    with WebhookReceiver(*[503] * 20) as receiver:
        async with running_settings(hook_settings()) as client:
            endpoint = await register(client, alice, receiver.url, ["job.completed"])
            await finished_job(client, alice)
            await received(receiver, 1)
            for n in range(1, len(outgoing.RETRY_SCHEDULE) + 1):

                async def recorded(n: int = n) -> bool:
                    return await _attempts(db, n)

                await wait_until(recorded, f"attempt {n} to be recorded")
                await make_due(db)
            await wait_until(lambda: _status(db, "failed"), "the delivery to give up")
            (gone,) = await deliveries(client, alice, endpoint["id"])
            assert len(gone["attempts"]) == len(outgoing.RETRY_SCHEDULE) + 1
            assert len(receiver.received) == len(outgoing.RETRY_SCHEDULE) + 1


async def _attempts(db: asyncpg.Connection, n: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM webhook_attempts") >= n)


async def _status(db: asyncpg.Connection, status: str) -> bool:
    return bool(await db.fetchval("SELECT status FROM webhook_deliveries") == status)


def test_the_backoff_lasts_about_a_day() -> None:
    assert list(outgoing.RETRY_SCHEDULE) == sorted(outgoing.RETRY_SCHEDULE)
    assert 20 * 3600 < sum(outgoing.RETRY_SCHEDULE) <= 26 * 3600
    assert outgoing.retry_in(0) == 5 and outgoing.retry_in(len(outgoing.RETRY_SCHEDULE)) is None


async def test_only_subscribed_events_are_sent(
    hook_settings: Callable[..., Settings], auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    with WebhookReceiver() as failures, WebhookReceiver() as completions:
        settings = hook_settings(local_provider_fail_rate=1.0, max_attempts=1)
        async with running_settings(settings) as client:
            await register(client, alice, failures.url, ["job.failed"])
            both = await register(client, alice, completions.url, ["job.completed", "job.failed"])
            job = await finished_job(client, alice)
            assert job["status"] == "failed"
            (message,) = await received(failures, 1)
            assert json.loads(message.body)["type"] == "job.failed"
            assert json.loads(message.body)["data"]["status"] == "failed"
            assert json.loads(message.body)["data"]["error_code"] == "provider_unavailable"
            await assert_as_documented(client, message)
            (also,) = await received(completions, 1)
            assert verified(both["secret"], also)["data"]["id"] == job["id"]
    with WebhookReceiver() as receiver:
        async with running_settings(hook_settings()) as client:
            await register(client, alice, receiver.url, ["job.failed"])
            await register(client, alice, receiver.url, ["job.completed"])
            await finished_job(client, alice)
            (only,) = await received(receiver, 1)  # from the job.completed endpoint alone
            assert json.loads(only.body)["type"] == "job.completed"


async def test_after_a_rotation_both_secrets_verify_for_a_day_then_the_new_one_only(
    hook_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    alice = auth_headers(ALICE)
    with WebhookReceiver() as receiver:
        async with running_settings(hook_settings()) as client:
            endpoint = await register(client, alice, receiver.url, ["job.completed"])
            assert endpoint["previous_secret_expires_at"] is None
            url = f"/v1/webhook-endpoints/{endpoint['id']}"
            rotated = await client.post(f"{url}/secret", headers=alice)
            assert rotated.status_code == 200, rotated.text
            new_secret = rotated.json()["secret"]
            assert new_secret.startswith("whsec_") and new_secret != endpoint["secret"]
            overlap = datetime.fromisoformat(rotated.json()["previous_secret_expires_at"])
            left = overlap - datetime.now(UTC)
            assert timedelta(hours=23, minutes=59) < left <= timedelta(hours=24)
            shown = (await client.get(url, headers=alice)).json()
            assert (
                shown["previous_secret_expires_at"] == rotated.json()["previous_secret_expires_at"]
            )

            # During the overlap: one signature by each secret, and a receiver still on the
            # old one verifies, as does one that switched.
            await finished_job(client, alice)
            (message,) = await received(receiver, 1)
            assert len(message.headers["webhook-signature"].split(" ")) == 2
            assert verified(new_secret, message)["type"] == "job.completed"
            assert verified(endpoint["secret"], message)["type"] == "job.completed"

            # Once it lapses, the new secret alone signs.
            await db.execute(
                "UPDATE webhook_endpoints SET previous_secret_expires_at = now() WHERE id = $1",
                uuid.UUID(endpoint["id"]),
            )
            assert (await client.get(url, headers=alice)).json()[
                "previous_secret_expires_at"
            ] is None
            await finished_job(client, alice)
            _, later = await received(receiver, 2)
            assert len(later.headers["webhook-signature"].split(" ")) == 1
            assert verified(new_secret, later)["type"] == "job.completed"
            with pytest.raises(WebhookVerificationError):
                verified(endpoint["secret"], later)

            # A second rotation keeps only the secret it replaces, not the one before it.
            again = (await client.post(f"{url}/secret", headers=alice)).json()
            await finished_job(client, alice)
            _, _, third = await received(receiver, 3)
            assert verified(again["secret"], third) and verified(new_secret, third)
            with pytest.raises(WebhookVerificationError):
                verified(endpoint["secret"], third)


async def test_a_replaced_secret_is_erased_from_the_database_once_its_day_is_over(
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    storage: Storage,
) -> None:
    """Once its overlap ends, a replaced secret signs nothing (reads mask it), and it must
    not stay stored either: the worker's sweep (as it starts, then hourly) clears it and its
    expiry. A secret still in its day is kept."""
    settings = make_settings(worker_in_process=False)
    alice = auth_headers(ALICE)
    async with running_settings(settings) as client:
        lapsed = await register(client, alice, "https://8.8.8.8/h", ["job.completed"])
        current = await register(client, alice, "https://8.8.4.4/h", ["job.completed"])
        for endpoint in (lapsed, current):
            url = f"/v1/webhook-endpoints/{endpoint['id']}/secret"
            assert (await client.post(url, headers=alice)).status_code == 200
    await db.execute(
        "UPDATE webhook_endpoints SET previous_secret_expires_at = now() WHERE id = $1",
        uuid.UUID(lapsed["id"]),
    )
    stored = (
        "SELECT previous_secret, previous_secret_expires_at FROM webhook_endpoints WHERE id = $1"
    )

    async def erased() -> bool:
        return tuple(await db.fetchrow(stored, uuid.UUID(lapsed["id"]))) == (None, None)

    async with worker_running(Worker(settings, pool, LocalProvider(), storage)):
        await wait_until(erased, "the worker to erase the lapsed secret")
    kept = await db.fetchrow(stored, uuid.UUID(current["id"]))
    assert kept["previous_secret"] == current["secret"]
    assert kept["previous_secret_expires_at"] > datetime.now(UTC) + timedelta(hours=23)


async def test_a_deleted_endpoint_gets_nothing_more(
    hook_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    alice = auth_headers(ALICE)
    with WebhookReceiver(*[500] * 10) as dropped, WebhookReceiver() as kept:
        async with running_settings(hook_settings()) as client:
            endpoint = await register(client, alice, dropped.url, ["job.completed"])
            await finished_job(client, alice)
            await received(dropped, 1)
            await wait_until(lambda: _attempts(db, 1), "the failed attempt to be recorded")
            response = await client.delete(f"/v1/webhook-endpoints/{endpoint['id']}", headers=alice)
            assert response.status_code == 204
            listed = await client.get("/v1/webhook-endpoints", headers=alice)
            assert listed.json()["items"] == []
            gone = await client.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=alice)
            assert_problem(gone, 404)
            await register(client, alice, kept.url, ["job.completed"])
            await make_due(db)
            await finished_job(client, alice)
            await received(kept, 1)  # the sender has run since the deletion
            assert len(dropped.received) == 1
            assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 1


async def failed_once(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    db: asyncpg.Connection,
    receiver: WebhookReceiver,
) -> tuple[dict[str, Any], dict[str, Any], Received]:
    """An endpoint at `receiver` (answering 500 first) for job.completed, a completed job,
    and the delivery's first attempt, failed and recorded."""
    endpoint = await register(client, headers, receiver.url, ["job.completed"])
    job = await finished_job(client, headers)
    (first,) = await received(receiver, 1)
    await wait_until(lambda: _attempts(db, 1), "the failed attempt to be recorded")
    return endpoint, job, first


async def test_a_changed_url_gets_the_pending_deliveries_at_once_and_new_events_the_next_jobs(
    hook_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first retry an hour away (as later in the schedule): moved, it goes out at once."""
    monkeypatch.setattr(outgoing, "RETRY_SCHEDULE", (3600.0, 3600.0))
    alice = auth_headers(ALICE)
    with WebhookReceiver(500) as old, WebhookReceiver() as new:
        async with running_settings(hook_settings()) as client:
            endpoint, job, first = await failed_once(client, alice, db, old)
            url = f"/v1/webhook-endpoints/{endpoint['id']}"

            changes = {"url": new.url, "events": ["job.failed", "job.completed"]}
            changed = await client.patch(url, json=changes, headers=alice)
            assert changed.status_code == 200, changed.text
            shown = {k: v for k, v in endpoint.items() if k != "secret"}
            both = ["job.completed", "job.failed"]
            assert changed.json() == {**shown, "url": new.url, "events": both}
            assert (await client.get(url, headers=alice)).json() == changed.json()
            (moved,) = await received(new, 1)  # the pending delivery, at its new address
            assert moved.headers["webhook-id"] == first.headers["webhook-id"]
            assert verified(endpoint["secret"], moved)["data"]["id"] == job["id"]
            assert len(old.received) == 1

            only_failed = await client.patch(url, json={"events": ["job.failed"]}, headers=alice)
            assert only_failed.json()["events"] == ["job.failed"]
            assert only_failed.json()["url"] == new.url
            await finished_job(client, alice)  # completed: queued (or not) as the job ended
            assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 1


async def test_a_paused_endpoint_gets_nothing_queued_and_its_pending_deliveries_wait(
    hook_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resumed, a parked delivery is due in a lease (1 s here, 50 s by default)."""
    monkeypatch.setattr(outgoing, "lease_seconds", lambda settings: 1.0)
    alice = auth_headers(ALICE)
    with WebhookReceiver(500) as paused, WebhookReceiver() as other:
        async with running_settings(hook_settings()) as client:
            endpoint, job, _ = await failed_once(client, alice, db, paused)
            url = f"/v1/webhook-endpoints/{endpoint['id']}"

            off = await client.patch(url, json={"enabled": False}, headers=alice)
            assert off.status_code == 200, off.text
            since = off.json()["disabled_at"]
            assert since is not None
            again = await client.patch(url, json={"enabled": False}, headers=alice)
            assert again.json()["disabled_at"] == since  # a pause keeps its first time
            endpoint_id = uuid.UUID(endpoint["id"])
            parked = "SELECT next_attempt_at = 'infinity' FROM webhook_deliveries"
            assert await db.fetchval(parked)  # out of the claim's way
            (listed,) = await deliveries(client, alice, endpoint["id"])
            assert listed["status"] == "pending" and listed["next_attempt_at"] is None
            # An attempt that was under way as the pause came parks its delivery as it ends
            # (its claim, made before the pause, is the delivery's last).
            delivery_id, lease_id = await db.fetchrow(
                "UPDATE webhook_deliveries SET lease_id = gen_random_uuid() RETURNING id, lease_id"
            )
            await db.set_type_codec(
                "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
            await outgoing_db.record_attempt(
                db,
                delivery_id,
                lease_id,
                payload={},
                status_code=503,
                error="the endpoint answered 503",
                duration_ms=5,
                delivered=False,
                retry_in_seconds=5.0,
            )
            assert await db.fetchval(parked)
            await register(client, alice, other.url, ["job.completed"])
            await make_due(db)  # even due, a paused endpoint's delivery is not claimed
            await finished_job(client, alice)
            await received(other, 1)  # the sender has run since the pause
            assert len(paused.received) == 1
            for_paused = "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1"
            assert await db.fetchval(for_paused, endpoint_id) == 1
            await db.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = 'infinity' WHERE id = $1",
                delivery_id,
            )  # parked again, as it was before make_due

            on = await client.patch(url, json={"enabled": True}, headers=alice)
            assert on.json()["disabled_at"] is None
            _, resumed = await received(paused, 2)  # a lease later
            assert verified(endpoint["secret"], resumed)["data"]["id"] == job["id"]
            (delivery,) = await recorded(client, alice, endpoint["id"])
            assert delivery["status"] == "delivered"
            assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]


async def test_a_delivery_parked_past_its_retry_schedule_fails_on_resume_instead_of_going_out(
    hook_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resumed, an endpoint gets no delivery older (since its job ended) than the retry
    schedule lasts, as if it had never been paused: that one is `failed`, saying why, and
    one still inside the schedule goes out a lease later as before. Retries an hour apart
    here, so that neither is retried before the pause (the span is then 2 h)."""
    monkeypatch.setattr(outgoing, "RETRY_SCHEDULE", (3600.0, 3600.0))
    monkeypatch.setattr(outgoing, "lease_seconds", lambda settings: 1.0)
    span = sum(outgoing.RETRY_SCHEDULE)
    alice = auth_headers(ALICE)
    with WebhookReceiver(500, 500) as receiver:
        async with running_settings(hook_settings()) as client:
            endpoint = await register(client, alice, receiver.url, ["job.completed"])
            stale, fresh = await finished_job(client, alice), await finished_job(client, alice)
            await received(receiver, 2)
            await wait_until(lambda: _attempts(db, 2), "both failed attempts to be recorded")
            url = f"/v1/webhook-endpoints/{endpoint['id']}"
            assert (await client.patch(url, json={"enabled": False}, headers=alice)).is_success
            for job, age in ((stale, span + 60), (fresh, span - 600)):
                await db.execute(
                    "UPDATE webhook_deliveries "
                    "SET created_at = now() - make_interval(secs => $2) WHERE job_id = $1",
                    uuid.UUID(job["id"]),
                    age,
                )

            assert (await client.patch(url, json={"enabled": True}, headers=alice)).is_success
            *_, resumed = await received(receiver, 3)
            assert verified(endpoint["secret"], resumed)["data"]["id"] == fresh["id"]
            listed = {d["job_id"]: d for d in await recorded(client, alice, endpoint["id"])}
            expired = listed[stale["id"]]
            assert expired["status"] == "failed" and expired["next_attempt_at"] is None
            assert [a["status_code"] for a in expired["attempts"]] == [500]  # none since
            assert expired["error"] == "expired while the endpoint was paused"
            assert listed[fresh["id"]]["status"] == "delivered"
            assert listed[fresh["id"]]["error"] is None
            await finished_job(client, alice)
            await received(receiver, 4)  # the sender has run since the resume
            assert [json.loads(m.body)["data"]["id"] for m in receiver.received].count(
                stale["id"]
            ) == 1


async def test_a_claimed_delivery_is_not_made_due_again_by_a_pause_a_resume_or_a_move(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """A sender has claimed the delivery and is sending it (for a lease): no change to its
    endpoint may make it due meanwhile, or a second sender would send it beside the first."""
    settings = make_settings(worker_in_process=False)
    alice = auth_headers(ALICE)
    async with running_settings(settings) as client:
        endpoint = await register(client, alice, "https://8.8.8.8/h", ["job.completed"])
        await db.execute(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, type, job_id) "
            "VALUES ($1, 'job.completed:claimed', 'job.completed', gen_random_uuid())",
            uuid.UUID(endpoint["id"]),
        )
        lease = outgoing.lease_seconds(settings)
        assert len(await outgoing_db.claim_due(db, 10, lease)) == 1
        url = f"/v1/webhook-endpoints/{endpoint['id']}"
        for change in ({"enabled": False}, {"enabled": True}, {"url": "https://8.8.4.4/h"}):
            assert (await client.patch(url, json=change, headers=alice)).status_code == 200
            assert await outgoing_db.claim_due(db, 10, lease) == [], change


async def test_a_sender_whose_lease_ran_out_leaves_the_next_claim_alone(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """A sender stalled past its lease, and another claimed the delivery meanwhile. The
    first one's failure is logged but changes nothing: made due again, the delivery would be
    sent a third time beside the second sender's attempt. A success counts whoever sent it,
    even after the other sender gave the delivery up."""
    async with running_settings(make_settings(worker_in_process=False)) as client:
        endpoint = await register(client, auth_headers(ALICE), "https://8.8.8.8/h", ["job.failed"])
    await db.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, type, job_id) "
        "VALUES ($1, 'job.failed:lapsed', 'job.failed', gen_random_uuid())",
        uuid.UUID(endpoint["id"]),
    )
    await db.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")

    async def attempt(claim: asyncpg.Record, status_code: int, retry: float | None) -> None:
        await outgoing_db.record_attempt(
            db,
            claim["id"],
            claim["lease_id"],
            payload={},
            status_code=status_code,
            error=None if status_code == 200 else f"the endpoint answered {status_code}",
            duration_ms=5,
            delivered=status_code == 200,
            retry_in_seconds=retry,
        )

    state = "SELECT status, attempts, next_attempt_at FROM webhook_deliveries"
    (stalled,) = await outgoing_db.claim_due(db, 10, 50.0)
    await make_due(db)  # its lease ran out
    (second,) = await outgoing_db.claim_due(db, 10, 50.0)
    assert second["lease_id"] != stalled["lease_id"]
    claimed = await db.fetchrow(state)
    await attempt(stalled, 503, 5.0)
    assert await db.fetchrow(state) == claimed  # still the second sender's, for its lease
    assert await outgoing_db.claim_due(db, 10, 50.0) == []
    await attempt(second, 503, None)  # its last attempt: given up
    assert (await db.fetchrow(state))["status"] == "failed"
    await attempt(stalled, 200, None)  # the stalled one's send got through after all
    status, attempts, _ = await db.fetchrow(state)
    assert (status, attempts) == ("delivered", 2)
    logged = "SELECT status_code FROM webhook_attempts ORDER BY attempted_at, id"
    assert [r["status_code"] for r in await db.fetch(logged)] == [503, 503, 200]


async def test_recording_an_attempt_locks_as_a_pause_does_so_neither_deadlocks(
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    db_url: str,
) -> None:
    """A PATCH locks the endpoint, then its deliveries. Recording an attempt must too, on
    every path: with a generic plan, a success whose row was changed meanwhile used to take
    the endpoint's lock last, on the recheck, and deadlock with a PATCH holding it (the
    success then never recorded, and sent again after the lease)."""
    async with running_settings(make_settings(worker_in_process=False)) as client:
        endpoint = await register(client, auth_headers(ALICE), "https://8.8.8.8/h", ["job.failed"])
    endpoint_id = uuid.UUID(endpoint["id"])
    delivery_id = await db.fetchval(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, type, job_id) "
        "VALUES ($1, 'job.failed:locks', 'job.failed', gen_random_uuid()) RETURNING id",
        endpoint_id,
    )
    changer, sender, patcher = [await asyncpg.connect(db_url) for _ in range(3)]
    try:
        await sender.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        await sender.execute("SET plan_cache_mode = force_generic_plan")
        changing = changer.transaction()
        await changing.start()  # the delivery row changed and locked, not yet committed
        await changer.execute(
            "UPDATE webhook_deliveries SET attempts = 0 WHERE id = $1", delivery_id
        )
        recording = asyncio.create_task(
            outgoing_db.record_attempt(
                sender,
                delivery_id,
                uuid.uuid4(),  # a success is recorded under any claim
                payload={},
                status_code=200,
                error=None,
                duration_ms=5,
                delivered=True,
                retry_in_seconds=None,
            )
        )
        await until_a_lock_wait(db, "the attempt's record to wait", recording)
        patching = patcher.transaction()
        await patching.start()
        locked = asyncio.create_task(outgoing_db.lock_endpoint(patcher, endpoint_id, ALICE))
        await asyncio.sleep(0.2)  # holds the endpoint now, or waits for the record's share
        await changing.commit()

        async def pause() -> None:
            await locked
            await outgoing_db.update_endpoint(patcher, endpoint_id, ALICE, None, None, False)
            await outgoing_db.reschedule_pending(
                patcher, endpoint_id, enabled=False, moved=False, lease_seconds=50.0
            )
            await patching.commit()

        async with asyncio.timeout(DEADLINE_SECONDS):
            await asyncio.gather(recording, pause())
    finally:
        for conn in (changer, sender, patcher):
            await conn.close()
    assert await db.fetchval("SELECT status FROM webhook_deliveries") == "delivered"


@pytest.mark.parametrize(
    "body",
    [
        {"url": None},
        {"events": None},
        {"enabled": None},
        {"enabled": "false"},  # lax pydantic reads "false", "no" and 0 as false
        {"enabled": 0},
        {"events": []},
        {"events": ["job.started"]},
        {"url": "https://10.1.2.3/hook"},
        {"url": "http://8.8.8.8/hook"},
        {"url": "https://8.8.8.8/hook", "secret": "whsec_mine"},
    ],
)
async def test_a_change_that_cannot_be_made_is_a_422_and_changes_nothing(
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    body: dict[str, Any],
) -> None:
    async with running_settings(make_settings(worker_in_process=False)) as client:
        endpoint = await register(client, auth_headers(ALICE), "https://8.8.8.8/h", ["job.failed"])
        before = await db.fetchrow("SELECT * FROM webhook_endpoints")
        response = await client.patch(
            f"/v1/webhook-endpoints/{endpoint['id']}", json=body, headers=auth_headers(ALICE)
        )
        problem = assert_problem(response, 422)
        assert len(problem.get("errors", [])) <= 1, problem  # one error, not one per type
        assert await db.fetchrow("SELECT * FROM webhook_endpoints") == before


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # not https (and not development)
        "ftp://example.com/hook",
        "https://user:secret@8.8.8.8/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[fd00::1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "https://host.invalid/hook",  # does not resolve
        "not a url",
        "https://8.8.8.8:0/hook",  # port 0: nothing can be sent there
        "https://8.8.8.8/hook#part",  # a fragment is never sent: what did they mean?
    ],
)
async def test_insecure_or_private_urls_are_refused(
    make_settings: Callable[..., Settings], auth_headers: Headers, url: str
) -> None:
    async with running_settings(make_settings(worker_in_process=False)) as client:
        response = await client.post(
            "/v1/webhook-endpoints",
            json={"url": url, "events": ["job.completed"]},
            headers=auth_headers(ALICE),
        )
        assert_problem(response, 422)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://exa mple.com/hook", "exa mple.com"),
        ("https://exa%20mple.com/hook", "exa%20mple.com"),
        ("https://exa<mple.com/hook", "exa<mple.com"),
        ("https://exa|mple.com/hook", "exa|mple.com"),
        ("https://exa..mple.com/hook", "exa..mple.com"),
        ("https://.example.com/hook", ".example.com"),
        (f"https://{'a' * 64}.example.com/hook", f"{'a' * 64}.example.com"),
    ],
)
async def test_a_host_no_name_can_have_is_refused_as_malformed_without_a_lookup(
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    host: str,
) -> None:
    asked: list[object] = []
    resolve = socket.getaddrinfo

    def noting(name: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(name)
        return resolve(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", noting)
    async with running_settings(make_settings(worker_in_process=False)) as client:
        response = await client.post(
            "/v1/webhook-endpoints",
            json={"url": url, "events": ["job.completed"]},
            headers=auth_headers(ALICE),
        )
        problem = assert_problem(response, 422)
        assert problem["detail"] == f"The URL is malformed: {host!r} is not a host name."
        listed = await client.get("/v1/webhook-endpoints", headers=auth_headers(ALICE))
        assert listed.json()["items"] == []
    assert [name for name in asked if "mple" in str(name) or "aaaa" in str(name)] == []


async def test_http_to_loopback_needs_development(
    hook_settings: Callable[..., Settings], auth_headers: Headers
) -> None:
    body = {"url": "http://127.0.0.1:9/hook", "events": ["job.completed"]}
    async with running_settings(hook_settings(env="test", worker_in_process=False)) as client:
        refused = await client.post("/v1/webhook-endpoints", json=body, headers=auth_headers(ALICE))
        assert_problem(refused, 422)
    async with running_settings(
        hook_settings(webhooks_allow_private=False, worker_in_process=False)
    ) as client:
        allowed = await client.post("/v1/webhook-endpoints", json=body, headers=auth_headers(ALICE))
        assert allowed.status_code == 201, allowed.text


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://8.8.8.8/hook", "events": []},
        {"url": "https://8.8.8.8/hook", "events": ["job.started"]},
        {"url": "https://8.8.8.8/hook"},
        {"url": "https://8.8.8.8/\u0000", "events": ["job.failed"]},
        {"url": "https://8.8.8.8/" + "a" * 2000, "events": ["job.failed"]},
    ],
)
async def test_an_endpoint_needs_known_events_and_a_usable_url(
    make_settings: Callable[..., Settings], auth_headers: Headers, body: dict[str, Any]
) -> None:
    async with running_settings(make_settings(worker_in_process=False)) as client:
        response = await client.post(
            "/v1/webhook-endpoints", json=body, headers=auth_headers(ALICE)
        )
        assert_problem(response, 422)


async def test_deliveries_are_listed_a_page_at_a_time_newest_first(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """Every delivery can be read, however many: pages follow `next_cursor`, none twice,
    ties in time ordered by id."""
    alice = auth_headers(ALICE)
    async with running_settings(make_settings(worker_in_process=False)) as client:
        endpoint = await register(client, alice, "https://8.8.8.8/h", ["job.failed"])
        made = await db.fetch(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, type, job_id, created_at) "
            "SELECT $1, 'job.failed:' || n, 'job.failed', gen_random_uuid(), "
            "       '2026-11-01T00:00:00Z'::timestamptz + make_interval(secs => n / 2) "
            "FROM generate_series(1, 7) n RETURNING id, created_at",
            uuid.UUID(endpoint["id"]),
        )
        url = f"/v1/webhook-endpoints/{endpoint['id']}/deliveries"
        pages: list[list[str]] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = await client.get(url, params=params, headers=alice)
            assert page.status_code == 200, page.text
            pages.append([d["id"] for d in page.json()["items"]])
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        whole = await client.get(url, headers=alice)  # up to 100 without a limit
        too_many = await client.get(url, params={"limit": 101}, headers=alice)
        foreign = await client.get(url, params={"cursor": "bm90LWEtY3Vyc29y"}, headers=alice)

    newest_first = sorted(made, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == [str(r["id"]) for r in newest_first]
    assert [d["id"] for d in whole.json()["items"]] == [str(r["id"]) for r in newest_first]
    assert whole.json()["next_cursor"] is None
    assert_problem(too_many, 422)
    assert_problem(foreign, 400)


async def test_another_users_endpoint_is_a_404_and_unchanged(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    async with running_settings(make_settings(worker_in_process=False)) as client:
        endpoint = await register(client, auth_headers(BOB), "https://8.8.8.8/h", ["job.failed"])
        before = await db.fetchrow("SELECT * FROM webhook_endpoints")
        alice = auth_headers(ALICE)
        base = f"/v1/webhook-endpoints/{endpoint['id']}"
        assert_problem(await client.delete(base, headers=alice), 404)
        assert_problem(await client.patch(base, json={"enabled": False}, headers=alice), 404)
        assert_problem(await client.post(f"{base}/secret", headers=alice), 404)
        assert_problem(await client.get(f"{base}/deliveries", headers=alice), 404)
        assert (await client.get("/v1/webhook-endpoints", headers=alice)).json()["items"] == []
        assert await db.fetchrow("SELECT * FROM webhook_endpoints") == before


async def test_a_user_has_at_most_webhook_endpoints_max_even_registering_at_once(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """Each endpoint gets every event of its user's jobs, so their number is capped: one
    over is a 409 that names the limit and creates nothing, also when ten registrations
    race (they are serialised per user, so none reads a count another is about to raise);
    another user's endpoints count apart, and deleting one makes room."""
    settings = make_settings(worker_in_process=False, webhook_endpoints_max=3)
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    body = {"url": "https://8.8.8.8/h", "events": ["job.completed"]}
    async with running_settings(settings) as client:
        await client.get("/v1/me", headers=alice)  # her row exists before the race
        raced = await asyncio.gather(
            *(client.post("/v1/webhook-endpoints", json=body, headers=alice) for _ in range(10))
        )
        assert sorted(r.status_code for r in raced) == [201] * 3 + [409] * 7
        refused = assert_problem(next(r for r in raced if r.status_code == 409), 409)
        assert refused["limit"] == 3
        assert refused["detail"] == (
            "A user may have at most 3 webhook endpoints; delete one to add another."
        )
        counted = "SELECT count(*) FROM webhook_endpoints WHERE user_id = $1"
        assert await db.fetchval(counted, ALICE) == 3
        assert (
            await client.post("/v1/webhook-endpoints", json=body, headers=bob)
        ).status_code == 201
        first = next(r for r in raced if r.status_code == 201).json()["id"]
        deleted = await client.delete(f"/v1/webhook-endpoints/{first}", headers=alice)
        assert deleted.status_code == 204
        assert (
            await client.post("/v1/webhook-endpoints", json=body, headers=alice)
        ).status_code == 201
        assert_problem(await client.post("/v1/webhook-endpoints", json=body, headers=alice), 409)
        assert await db.fetchval(counted, ALICE) == 3


async def test_the_url_is_checked_again_at_send_time(
    hook_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """Registered while loopback was allowed; the sender (now in a stricter process) refuses
    to send, and records why."""
    alice = auth_headers(ALICE)
    with WebhookReceiver() as receiver:
        async with running_settings(hook_settings(worker_in_process=False)) as client:
            endpoint = await register(client, alice, receiver.url, ["job.completed"])
        async with running_settings(
            hook_settings(env="test", webhooks_allow_private=False)
        ) as client:
            await finished_job(client, alice)
            await wait_until(lambda: _attempts(db, 1), "the refused attempt to be recorded")
            (refused,) = await deliveries(client, alice, endpoint["id"])
            assert refused["status"] == "pending"  # DNS or settings may change: retried
            (attempt,) = refused["attempts"]
            assert attempt["status_code"] is None and "https" in attempt["error"]
            assert receiver.received == []


async def test_an_erased_users_endpoints_and_deliveries_are_deleted(
    hook_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    alice = auth_headers(ALICE)
    with WebhookReceiver(*[500] * 10) as receiver:
        async with running_settings(hook_settings()) as client:
            await register(client, alice, receiver.url, ["job.completed"])
            await finished_job(client, alice)
            await wait_until(lambda: _attempts(db, 1), "an attempt to be recorded")
            assert (await client.delete("/v1/me", headers=alice)).status_code == 204
    assert await db.fetchval("SELECT count(*) FROM webhook_endpoints") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_attempts") == 0


class _Recorder(BaseHTTPRequestHandler):
    """Records each POST's Host header and body (on the server: `received`)."""

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.headers["Host"], body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tls_endpoint() -> Iterator[tuple[TlsServer, int]]:
    """An HTTPS receiver on 127.0.0.2 (not where the system's resolver puts `localhost`),
    with the test CA's certificate for `localhost` and 127.0.0.1: (server, port)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.2", 0))
    listener.listen(8)
    server = TlsServer(_Recorder, listener)
    server.received = []  # type: ignore[attr-defined]
    server.serve_in_thread()
    try:
        yield server, listener.getsockname()[1]
    finally:
        server.shutdown()
        listener.close()


def resolve_as(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """A resolver stand-in: the n-th lookup (of any name) gets answers[n] (the last one
    after that); returns the names looked up, as they are."""
    looked_up: list[str] = []

    async def lookup(host: str, port: int, *_resolver: object) -> list[str]:
        looked_up.append(host)
        return [answers[min(len(looked_up), len(answers)) - 1]]

    monkeypatch.setattr(webhook_urls, "lookup", lookup)
    monkeypatch.setenv("SSL_CERT_FILE", ca_file())  # read when the sender's client is built
    return looked_up


async def test_a_delivery_connects_to_the_address_it_approved_and_checks_tls_by_name(
    hook_settings: Callable[..., Settings],
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
    tls_endpoint: tuple[TlsServer, int],
) -> None:
    """The sender resolves `localhost` itself as it connects (here a resolver stand-in says
    127.0.0.2) and connects there, not where the system's resolver would (127.0.0.1, where
    nothing listens). The endpoint's certificate (for `localhost`, not 127.0.0.2) is
    checked against the name, which `Host` carries too."""
    looked_up = resolve_as(monkeypatch, "127.0.0.2")
    # Not through a proxy, whatever the environment says (nothing listens there).
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    server, port = tls_endpoint
    alice = auth_headers(ALICE)
    async with running_settings(hook_settings()) as client:
        endpoint = await register(
            client, alice, f"https://localhost:{port}/hook", ["job.completed"]
        )
        await finished_job(client, alice)
        await wait_until(lambda: len(server.received) == 1, "the delivery")  # type: ignore[attr-defined]
        # the receiver has it before the sender has recorded its answer
        listed = await recorded(client, alice, endpoint["id"])
    ((host, body),) = server.received  # type: ignore[attr-defined]
    assert host == f"localhost:{port}"
    assert json.loads(body)["type"] == "job.completed"
    assert [d["status"] for d in listed] == ["delivered"]
    # At registration, before the attempt, and as its connection was made.
    assert looked_up == ["localhost"] * 3


async def first_attempt(
    settings: Settings, headers: dict[str, str], db: asyncpg.Connection, url: str
) -> dict[str, Any]:
    """The first attempt at delivering a job's end to `url`, once it is recorded."""
    async with running_settings(settings) as client:
        endpoint = await register(client, headers, url, ["job.completed"])
        await finished_job(client, headers)
        await wait_until(lambda: _attempts(db, 1), "the first attempt to be recorded")
        ((attempt,),) = [d["attempts"] for d in await deliveries(client, headers, endpoint["id"])]
    found: dict[str, Any] = attempt
    return found


async def test_a_certificate_for_another_name_fails_the_attempt(
    hook_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    tls_endpoint: tuple[TlsServer, int],
) -> None:
    resolve_as(monkeypatch, "127.0.0.2")
    server, port = tls_endpoint
    url = f"https://hooks.example.test:{port}/hook"
    attempt = await first_attempt(hook_settings(), auth_headers(ALICE), db, url)
    assert attempt["status_code"] is None and "CERTIFICATE_VERIFY_FAILED" in attempt["error"]
    assert server.received == []  # type: ignore[attr-defined]


async def test_a_name_that_turns_private_between_the_check_and_the_connection_is_refused(
    hook_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    tls_endpoint: tuple[TlsServer, int],
) -> None:
    """DNS rebinding: the name resolves to a public address at registration and for the
    check before the attempt, then to a loopback one (where an endpoint listens) as the
    connection is made. The connection is refused, and the attempt says why; no connection
    is tried to the public address either (it is never used to connect)."""
    looked_up = resolve_as(monkeypatch, "93.184.215.14", "93.184.215.14", "127.0.0.2")
    server, port = tls_endpoint
    strict = hook_settings(env="test", webhooks_allow_private=False)
    url = f"https://localhost:{port}/hook"
    attempt = await first_attempt(strict, auth_headers(ALICE), db, url)
    assert attempt["status_code"] is None
    assert "private or reserved address (127.0.0.2)" in attempt["error"]
    assert server.received == []  # type: ignore[attr-defined]
    assert looked_up == ["localhost"] * 3


async def test_an_attempt_ends_within_its_deadline_lookups_included(
    hook_settings: Callable[..., Settings],
    auth_headers: Headers,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resolver that answers the connection's lookup only after 30 s: the attempt ends at
    WEBHOOK_TIMEOUT_SECONDS (well inside the delivery's lease) and says so."""
    lookups = 0

    async def slow_lookup(host: str, port: int, *_resolver: object) -> list[str]:
        nonlocal lookups
        lookups += 1
        if lookups == 3:  # registration, the check before the attempt, then the connection
            await asyncio.sleep(30)
        return ["127.0.0.2"]

    monkeypatch.setattr(webhook_urls, "lookup", slow_lookup)
    settings = hook_settings(webhook_timeout_seconds=1)
    attempt = await first_attempt(settings, auth_headers(ALICE), db, "https://localhost:9/hook")
    assert attempt["status_code"] is None
    assert attempt["error"] == "the attempt took longer than 1 s"
    assert attempt["duration_ms"] < 5000


async def test_an_address_that_refuses_leaves_the_next_one_its_turn(
    hook_settings: Callable[..., Settings],
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
    tls_endpoint: tuple[TlsServer, int],
) -> None:
    """The name resolves to two addresses, in this order: nothing listens at the first
    (127.0.0.3), the endpoint at the second. The delivery reaches it."""
    monkeypatch.setenv("SSL_CERT_FILE", ca_file())

    async def two_addresses(host: str, port: int, *_resolver: object) -> list[str]:
        return ["127.0.0.3", "127.0.0.2"]

    monkeypatch.setattr(webhook_urls, "lookup", two_addresses)
    server, port = tls_endpoint
    alice = auth_headers(ALICE)
    async with running_settings(hook_settings()) as client:
        await register(client, alice, f"https://localhost:{port}/hook", ["job.completed"])
        await finished_job(client, alice)
        await wait_until(lambda: len(server.received) == 1, "the delivery")  # type: ignore[attr-defined]
