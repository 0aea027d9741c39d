"""What Clerk's user.created and user.updated call: the row with its signup grant exactly
once (whether the webhook or the first request comes first, or both at once), and the email
following the primary address."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.errors import Conflict, NotFound
from app.services import accounts, credits
from app.services.users import primary_email
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
USER = "user_acc_1"


@pytest.fixture
async def services(app: FastAPI) -> AsyncIterator[Any]:
    yield app.state.services


async def signups(db: asyncpg.Connection, user_id: str) -> list[tuple[str, int]]:
    rows = await db.fetch(
        "SELECT reason, delta FROM credit_ledger WHERE user_id = $1 ORDER BY id", user_id
    )
    return [(r["reason"], r["delta"]) for r in rows]


async def test_user_created_makes_the_row_with_its_signup_grant_once(
    services: Any, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    user = await accounts.ensure_user(services.pool, services.users, USER, "one@example.test")
    assert user is not None and user.email == "one@example.test"
    again = await accounts.ensure_user(services.pool, services.users, USER, "one@example.test")
    assert again == user
    me = await client.get("/v1/me", headers=auth_headers(USER, "one@example.test"))
    assert me.status_code == 200 and me.json()["credits"] == 5
    assert await signups(db, USER) == [("signup", 5)]


async def test_user_created_after_the_first_request_grants_nothing_more(
    services: Any, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    assert (await client.get("/v1/me", headers=auth_headers(USER))).status_code == 200
    user = await accounts.ensure_user(services.pool, services.users, USER, "late@example.test")
    assert user is not None and user.email == f"{USER}@example.test"  # the row was not changed
    assert await signups(db, USER) == [("signup", 5)]


async def test_user_created_racing_first_requests_grants_the_signup_once(
    services: Any, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    ids = [f"user_acc_race_{i}" for i in range(8)]
    work: list[Any] = []
    for user_id in ids:
        headers = auth_headers(user_id)
        work += [client.get("/v1/me", headers=headers) for _ in range(3)]
        work += [
            accounts.ensure_user(services.pool, services.users, user_id, f"{user_id}@example.test")
            for _ in range(2)
        ]
    results = await asyncio.gather(*work)
    for result in results:
        if isinstance(result, httpx.Response):
            assert result.status_code == 200, result.text
    for user_id in ids:
        assert await signups(db, user_id) == [("signup", 5)]
    bad, unopened = await credits.check(db)
    assert bad == [] and unopened == 0


async def test_user_created_for_a_row_the_mobile_app_made_opens_its_balance(
    services: Any, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO users (id, email, credits) VALUES ($1, 'app@x.test', 3)", USER)
    await accounts.ensure_user(services.pool, services.users, USER, "app@x.test")
    assert await signups(db, USER) == [("opening_balance", 3)]


async def test_user_updated_moves_the_email_and_the_cached_user_follows(
    services: Any, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(USER, "old@example.test")
    assert (await client.get("/v1/me", headers=headers)).json()["email"] == "old@example.test"

    user = await accounts.update_email(services.pool, services.users, USER, "new@example.test")

    assert user.email == "new@example.test"
    assert (await client.get("/v1/me", headers=headers)).json()["email"] == "new@example.test"
    assert await db.fetchval("SELECT email FROM users WHERE id = $1", USER) == "new@example.test"
    # the old address is free for someone else now
    other = await client.get("/v1/me", headers=auth_headers("user_acc_2", "old@example.test"))
    assert other.status_code == 200, other.text


async def test_user_updated_refuses_a_taken_address_an_unknown_and_an_erased_id(
    services: Any, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    await client.get("/v1/me", headers=auth_headers(USER, "mine@example.test"))
    await client.get("/v1/me", headers=auth_headers("user_acc_2", "theirs@example.test"))
    with pytest.raises(Conflict):
        await accounts.update_email(services.pool, services.users, USER, "theirs@example.test")
    with pytest.raises(NotFound):
        await accounts.update_email(services.pool, services.users, "user_nobody", "n@x.test")
    await accounts.erase(services.pool, services.storage, services.users, USER, None)
    with pytest.raises(NotFound):
        await accounts.update_email(services.pool, services.users, USER, "back@example.test")
    assert await db.fetchval("SELECT email FROM users WHERE id = $1", USER) == (
        accounts.erased_email(USER)
    )
    assert_problem(await client.get("/v1/me", headers=auth_headers(USER)), 401)


def test_primary_email_reads_a_clerk_user_object() -> None:
    data = {
        "id": "user_2x",
        "primary_email_address_id": "idn_2",
        "email_addresses": [
            {"id": "idn_1", "email_address": "old@example.test"},
            {"id": "idn_2", "email_address": "primary@example.test"},
        ],
    }
    assert primary_email(data) == "primary@example.test"
    assert primary_email({**data, "primary_email_address_id": None}) == "old@example.test"
    assert primary_email({"id": "user_2x", "email_addresses": []}) is None
    assert primary_email({"email_addresses": "nonsense"}) is None
    assert primary_email(None) is None
