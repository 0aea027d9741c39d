"""POST /webhooks/clerk: Clerk's identity events, Svix-signed, stored once by `svix-id`,
applied once. Signed here with the `svix` library's own signer and a test secret, verified
by the service with the same library; the stored event, the users row, the ledger and what
a token for the user gets afterwards are read back."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from svix.webhooks import Webhook

from app.config import Settings
from app.main import create_app
from app.services import credits
from tests.support.problems import assert_problem

SECRET = "whsec_" + base64.b64encode(b"atelier-clerk-webhook-test-secret").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody-else-entirely").decode()
Headers = Callable[..., dict[str, str]]


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(clerk_webhook_secret=SECRET, worker_in_process=False))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://atelier.test") as c:
        yield c


def clerk_user(user_id: str, email: str) -> dict[str, Any]:
    """A Clerk user object as its webhooks carry it (the fields the service reads)."""
    address_id = f"idn_{uuid.uuid4().hex[:12]}"
    return {
        "id": user_id,
        "object": "user",
        "primary_email_address_id": address_id,
        "email_addresses": [
            {"id": f"idn_{uuid.uuid4().hex[:12]}", "email_address": f"old.{email}"},
            {"id": address_id, "email_address": email},
        ],
    }


def signed(
    event: dict[str, Any],
    *,
    msg_id: str | None = None,
    secret: str = SECRET,
    at: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of Svix's POST of `event` (as Clerk sends it)."""
    payload = json.dumps(event)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, at, payload)
    headers = {
        "Content-Type": "application/json",
        "svix-id": msg_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": signature,
    }
    return payload.encode(), headers


async def deliver(client: httpx.AsyncClient, event: dict[str, Any], **how: Any) -> httpx.Response:
    body, headers = signed(event, **how)
    return await client.post("/webhooks/clerk", content=body, headers=headers)


async def stored(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM webhook_events WHERE provider = 'clerk'")
    return count


async def test_forged_stale_or_unsigned_events_are_400_and_change_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = {"type": "user.created", "data": clerk_user("user_forged", "f@example.test")}
    forged = await deliver(client, event, secret=OTHER_SECRET)
    stale = await deliver(client, event, at=datetime.now(UTC) - timedelta(minutes=10))
    future = await deliver(client, event, at=datetime.now(UTC) + timedelta(minutes=10))
    body, headers = signed(event)
    tampered = await client.post(
        "/webhooks/clerk", content=body.replace(b"f@example", b"x@example"), headers=headers
    )
    unsigned = await client.post(
        "/webhooks/clerk", content=body, headers={"Content-Type": "application/json"}
    )
    replayed_id = dict(headers, **{"svix-id": "msg_another"})  # the id is signed too
    moved = await client.post("/webhooks/clerk", content=body, headers=replayed_id)
    for response in (forged, stale, future, tampered, unsigned, moved):
        assert_problem(response, 400)
    assert await stored(db) == 0
    assert await db.fetchval("SELECT count(*) FROM users WHERE id = 'user_forged'") == 0


async def test_an_event_is_read_whatever_content_type_it_is_labelled_with(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """The signature over the bytes decides, never the label (no 415 here)."""
    for n, content_type in enumerate(("text/plain", "application/octet-stream", None)):
        event = {"type": "user.created", "data": clerk_user(f"user_label_{n}", f"l{n}@e.test")}
        body, headers = signed(event)
        del headers["Content-Type"]
        if content_type:
            headers["Content-Type"] = content_type
        answer = await client.post("/webhooks/clerk", content=body, headers=headers)
        assert answer.status_code == 200, (content_type, answer.text)
    assert await stored(db) == 3


async def test_without_a_secret_the_endpoint_is_503(
    make_settings: Callable[..., Settings],
) -> None:
    application = create_app(make_settings(worker_in_process=False))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://a.test") as client:
            event = {"type": "user.created", "data": clerk_user("user_x", "x@example.test")}
            assert_problem(await deliver(client, event), 503)


async def test_user_created_makes_the_user_with_one_signup_grant_whatever_is_delivered_twice(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    event = {"type": "user.created", "data": clerk_user("user_new", "new@example.test")}
    body, headers = signed(event)
    answers = await asyncio.gather(
        *(client.post("/webhooks/clerk", content=body, headers=headers) for _ in range(3))
    )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    again = await client.post("/webhooks/clerk", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    # Clerk may also send the same change as a new message; and the user's first request
    assert (await deliver(client, event)).status_code == 200
    me = await client.get("/v1/me", headers=auth_headers("user_new", "new@example.test"))
    assert me.status_code == 200 and me.json()["credits"] == 5

    row = await db.fetchrow("SELECT email, credits FROM users WHERE id = 'user_new'")
    assert row is not None and tuple(row) == ("new@example.test", 5)
    reasons = await db.fetch("SELECT reason, delta FROM credit_ledger WHERE user_id = 'user_new'")
    assert [tuple(r) for r in reasons] == [("signup", 5)]
    assert await stored(db) == 2  # two messages, each stored once
    assert await credits.check(db) == ([], 0)


async def test_user_updated_moves_the_email_to_the_primary_address(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    assert (await client.get("/v1/me", headers=auth_headers("user_mv"))).status_code == 200
    event = {"type": "user.updated", "data": clerk_user("user_mv", "moved@example.test")}
    assert (await deliver(client, event)).status_code == 200
    me = await client.get("/v1/me", headers=auth_headers("user_mv"))
    assert me.json()["email"] == "moved@example.test"  # the cached user followed
    # An update for a user the service never saw creates it, as user.created would.
    unseen = {"type": "user.updated", "data": clerk_user("user_unseen", "u@example.test")}
    assert (await deliver(client, unseen)).status_code == 200
    assert await db.fetchval("SELECT email FROM users WHERE id = 'user_unseen'") == (
        "u@example.test"
    )


async def test_user_deleted_erases_the_account_and_its_token_is_refused(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers("user_bye")
    assert (await client.get("/v1/me", headers=headers)).status_code == 200
    prompt = await client.post("/v1/prompts", headers=headers, json={"prompt_text": "a fox"})
    assert prompt.status_code == 201, prompt.text
    event = {"type": "user.deleted", "data": {"id": "user_bye", "object": "user", "deleted": True}}
    response = await deliver(client, event)
    assert response.status_code == 200, response.text

    assert_problem(await client.get("/v1/me", headers=headers), 401)  # caches were warm
    assert await db.fetchval("SELECT count(*) FROM custom_prompts WHERE user_id = 'user_bye'") == 0
    row = await db.fetchrow("SELECT email, credits, erased_at FROM users WHERE id = 'user_bye'")
    assert row is not None and row["erased_at"] is not None and row["credits"] == 0
    assert "user_bye@example" not in row["email"]
    # Clerk sends user.created again for the same id: it stays erased, with no new credits.
    recreated = {"type": "user.created", "data": clerk_user("user_bye", "bye@example.test")}
    assert (await deliver(client, recreated)).status_code == 200
    assert_problem(await client.get("/v1/me", headers=headers), 401)
    assert await credits.check(db) == ([], 0)


async def test_an_event_without_a_user_id_is_kept_as_failed_and_answers_500(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = {"type": "user.deleted", "data": {"object": "user"}}
    assert_problem(await deliver(client, event), 500)
    error = await db.fetchval("SELECT error FROM webhook_events WHERE provider = 'clerk'")
    assert error is not None and "user id" in error
