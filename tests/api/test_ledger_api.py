"""GET /v1/me and GET /v1/credits/ledger: the caller's balance and its history, page by page."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from app.services import credits
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]


async def ledger_ids(conn: asyncpg.Connection, user_id: str) -> list[int]:
    """The user's ledger ids, newest first, straight from the table."""
    rows = await conn.fetch(
        "SELECT id FROM credit_ledger WHERE user_id = $1 ORDER BY id DESC", user_id
    )
    return [int(r["id"]) for r in rows]


async def get_page(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> dict[str, Any]:
    response = await client.get("/v1/credits/ledger", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def sign_up(client: httpx.AsyncClient, auth_headers: Headers, user_id: str) -> None:
    response = await client.get("/v1/me", headers=auth_headers(user_id))
    assert response.status_code == 200, response.text


def forged_cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


async def test_me_returns_profile_balance_and_subscription(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    headers = auth_headers("user_me", "me@example.test")
    first = await client.get("/v1/me", headers=headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["id"] == "user_me"
    assert body["email"] == "me@example.test"
    assert body["credits"] == 5
    assert body["subscription"] is None

    await credits.grant(db, "user_me", 3, "purchase", "cs_test_1")
    period_end = datetime(2027, 1, 1, tzinfo=UTC)
    await db.execute(
        "INSERT INTO subscriptions (user_id, status, price_id, current_period_end)"
        " VALUES ($1, 'Pro', 'price_pro_monthly', $2)",
        "user_me",
        period_end,
    )
    second = (await client.get("/v1/me", headers=headers)).json()
    assert second["credits"] == 8
    assert second["subscription"]["status"] == "Pro"
    assert second["subscription"]["price_id"] == "price_pro_monthly"
    assert datetime.fromisoformat(second["subscription"]["current_period_end"]) == period_end


async def test_me_without_a_token_is_401_problem_json(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/me"), 401)
    assert_problem(await client.get("/v1/credits/ledger"), 401)


async def test_ledger_pages_newest_first_without_repeats_or_gaps(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    headers = auth_headers("user_pages")
    await sign_up(client, auth_headers, "user_pages")
    for n in range(25):
        await credits.grant(db, "user_pages", n + 1, "purchase", f"evt_{n}")
    expected = await ledger_ids(db, "user_pages")
    assert len(expected) == 26

    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor is not None:
            params["cursor"] = cursor
        page = await get_page(client, headers, **params)
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 4, "the cursor never ran out"

    assert [len(p) for p in pages] == [10, 10, 6]
    items = [item for p in pages for item in p]
    assert [item["id"] for item in items] == expected
    assert items[0]["source_id"] == "evt_24" and items[0]["delta"] == 25
    assert items[-1]["reason"] == "signup" and items[-1]["delta"] == 5
    # the newest entry's balance_after is the balance /v1/me reports
    me = (await client.get("/v1/me", headers=headers)).json()
    assert items[0]["balance_after"] == me["credits"] == 5 + sum(range(1, 26))


async def test_ledger_pages_stay_stable_while_new_entries_arrive(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    headers = auth_headers("user_busy")
    await sign_up(client, auth_headers, "user_busy")
    for n in range(25):
        await credits.grant(db, "user_busy", 1, "purchase", f"evt_old_{n}")
    before = await ledger_ids(db, "user_busy")

    first = await get_page(client, headers, limit=10)
    await credits.grant(db, "user_busy", 2, "purchase", "evt_new_1")
    await credits.grant(db, "user_busy", 2, "purchase", "evt_new_2")
    second = await get_page(client, headers, limit=10, cursor=first["next_cursor"])
    await credits.grant(db, "user_busy", 2, "purchase", "evt_new_3")
    third = await get_page(client, headers, limit=10, cursor=second["next_cursor"])

    seen = [item["id"] for page in (first, second, third) for item in page["items"]]
    assert seen == before
    assert third["next_cursor"] is None

    fresh = await get_page(client, headers, limit=10)
    assert [item["source_id"] for item in fresh["items"][:3]] == [
        "evt_new_3",
        "evt_new_2",
        "evt_new_1",
    ]
    assert [item["id"] for item in fresh["items"][3:]] == before[:7]


async def test_ledger_shows_only_the_callers_entries(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await sign_up(client, auth_headers, "user_mine")
    await sign_up(client, auth_headers, "user_theirs")
    for n in range(6):
        await credits.grant(db, "user_mine", 1, "purchase", f"evt_mine_{n}")
        await credits.grant(db, "user_theirs", 1, "purchase", f"evt_theirs_{n}")
    mine = await ledger_ids(db, "user_mine")
    theirs = await ledger_ids(db, "user_theirs")

    everything = await get_page(client, auth_headers("user_mine"), limit=100)
    assert [item["id"] for item in everything["items"]] == mine
    assert everything["next_cursor"] is None

    # a cursor taken from the other user's pages still only pages through the caller's own
    their_page = await get_page(client, auth_headers("user_theirs"), limit=2)
    assert [item["id"] for item in their_page["items"]] == theirs[:2]
    mixed = await get_page(
        client, auth_headers("user_mine"), limit=100, cursor=their_page["next_cursor"]
    )
    ids = [item["id"] for item in mixed["items"]]
    assert ids and set(ids) <= set(mine)
    assert not set(ids) & set(theirs)


async def test_ledger_refuses_a_cursor_it_did_not_hand_out(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers("user_cursor")
    await sign_up(client, auth_headers, "user_cursor")
    for garbage in [
        "garbage",
        "!!!!",
        "eyJpZCI6",  # truncated base64 of '{"id":'
        forged_cursor({"id": "12"}),
        forged_cursor({"id": 1.5}),
        forged_cursor({"id": True}),
        forged_cursor({"position": 3}),
        forged_cursor([1, 2]),
        forged_cursor({"id": 2**70}),  # no bigint holds it
        forged_cursor({"id": -(2**70)}),
    ]:
        response = await client.get(
            "/v1/credits/ledger", headers=headers, params={"cursor": garbage}
        )
        body = assert_problem(response, 400)
        assert "cursor" in body["detail"], garbage


async def test_ledger_limit_outside_1_to_100_is_422_problem_json(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers("user_limit")
    await sign_up(client, auth_headers, "user_limit")
    for limit in ["0", "101", "-1", "ten"]:
        response = await client.get("/v1/credits/ledger", headers=headers, params={"limit": limit})
        body = assert_problem(response, 422)
        assert "limit" in body["detail"], body
    for good in [1, 100]:
        page = await get_page(client, headers, limit=good)
        assert len(page["items"]) == 1
        assert page["next_cursor"] is None
