"""GET /v1/images (the caller's) and GET /v1/feed (public images): every field, newest first,
keyset pages that neither repeat nor skip while images arrive, and the mobile app's rows."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.fakes.mobile_app import INSERT_IMAGE, PRISMA_CREATE_IMAGE
from tests.gallery.conftest import (
    Headers,
    ensure_user,
    generate,
    insert_image,
    insert_mobile_image,
)
from tests.support.problems import assert_problem

ALICE, BOB, CAROL = "user_list_alice", "user_list_bob", "user_list_carol"
ITEM_FIELDS = {
    "id",
    "image_url",
    "prompt",
    "created_at",
    "likes_count",
    "liked_by_me",
    "visibility",
}


async def all_pages(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], limit: int
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the pages never ended")


def expected_order(rows: list[tuple[datetime, uuid.UUID]]) -> list[str]:
    """Newest first; ties on created_at broken by id, larger first (as PostgreSQL orders
    uuids: byte by byte, which is the order of their hex strings)."""
    return [str(i) for _, i in sorted(rows, key=lambda r: (r[0], str(r[1])), reverse=True)]


async def test_my_images_list_newest_first_with_every_field(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    first = await generate(client, headers, prompt="a red kite", visibility="public")
    second = await generate(client, headers, prompt="a blue kite")
    await generate(client, auth_headers(BOB), prompt="bob's own kite")

    response = await client.get("/v1/images", headers=headers)

    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    items = page["items"]
    assert [i["id"] for i in items] == [second["image"]["id"], first["image"]["id"]]
    for item in items:
        assert ITEM_FIELDS <= item.keys()
        assert item["likes_count"] == 0 and item["liked_by_me"] is False
        assert item["mine"] is True
        # a URL that serves the image (signed, on this app's /files route)
        assert "/files/generations/" in item["image_url"]
    assert [i["prompt"] for i in items] == ["a blue kite", "a red kite"]
    assert [i["visibility"] for i in items] == ["private", "public"]
    assert items[0]["created_at"] >= items[1]["created_at"]


async def test_the_feed_lists_only_public_images_from_everyone_newest_first(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    public = [
        await insert_image(db, ALICE, visibility="public", created_at=base),
        await insert_image(db, BOB, visibility="public", created_at=base + timedelta(seconds=2)),
        await insert_image(db, CAROL, visibility="public", created_at=base + timedelta(seconds=1)),
    ]
    await insert_image(db, ALICE, created_at=base + timedelta(seconds=3))  # private
    await insert_image(db, BOB, created_at=base + timedelta(seconds=4))  # private

    response = await client.get("/v1/feed", headers=auth_headers(CAROL))

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i["id"] for i in items] == [str(public[1]), str(public[2]), str(public[0])]
    assert all(i["visibility"] == "public" for i in items)
    assert [i["mine"] for i in items] == [False, True, False]


async def test_pages_neither_repeat_nor_skip_while_new_images_arrive(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    base = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
    rows: list[tuple[datetime, uuid.UUID]] = []
    for n in range(23):
        # groups of three share a created_at: the order inside a group is the id's
        at = base + timedelta(microseconds=n // 3)
        rows.append((at, await insert_image(db, ALICE, created_at=at)))
    expected = expected_order(rows)

    listed: list[str] = []
    cursor: str | None = None
    arrived: list[str] = []
    for _ in range(100):
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/v1/images", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        listed += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # New images arrive between pages: some now, and one at the very time of a tie
        # group already being paged (the worker's clock does not order ids).
        arrived.append(str(await insert_image(db, ALICE)))
        late = await insert_image(db, ALICE, created_at=base + timedelta(microseconds=7))
        arrived.append(str(late))
    assert len(arrived) >= 5
    assert len(listed) == len(set(listed))  # nothing repeated
    assert [i for i in listed if i not in arrived] == expected  # nothing skipped, in order

    # The first page now starts with the images that arrived, newest first.
    newest = await client.get("/v1/images", params={"limit": 1}, headers=headers)
    assert newest.json()["items"][0]["id"] in arrived


async def test_the_feed_pages_through_ties_without_repeating_or_skipping(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    rows: list[tuple[datetime, uuid.UUID]] = []
    for n in range(12):
        owner = (ALICE, BOB, CAROL)[n % 3]
        rows.append((at, await insert_image(db, owner, visibility="public", created_at=at)))
        await insert_image(db, owner, created_at=at)  # private, never in the feed

    items = await all_pages(client, "/v1/feed", auth_headers(BOB), limit=5)

    assert [i["id"] for i in items] == expected_order(rows)


async def test_the_mobile_apps_rows_list_with_their_url_and_no_prompt(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    await ensure_user(db, ALICE)
    plain = await db.fetchrow(INSERT_IMAGE, ALICE, "https://cdn.example.test/alice/1.png")
    prisma = await db.fetchrow(
        PRISMA_CREATE_IMAGE, ALICE, "https://cdn.example.test/alice/2.png", datetime.now(UTC)
    )
    shared = await insert_mobile_image(db, ALICE, "https://cdn.example.test/alice/3.png")
    await db.execute("UPDATE generated_images SET visibility = 'public' WHERE id = $1", shared)
    assert plain is not None and prisma is not None

    mine = await client.get("/v1/images", headers=auth_headers(ALICE))
    feed = await client.get("/v1/feed", headers=auth_headers(BOB))

    assert mine.status_code == 200, mine.text
    by_id = {i["id"]: i for i in mine.json()["items"]}
    assert by_id.keys() == {str(plain["id"]), str(prisma["id"]), str(shared)}
    assert by_id[str(plain["id"])]["image_url"] == "https://cdn.example.test/alice/1.png"
    assert by_id[str(prisma["id"])]["image_url"] == "https://cdn.example.test/alice/2.png"
    for item in by_id.values():
        assert item["prompt"] is None
        assert item["likes_count"] == 0 and item["liked_by_me"] is False
        assert item["width"] is None and item["model"] is None
    assert by_id[str(shared)]["visibility"] == "public"
    assert feed.status_code == 200, feed.text
    assert [(i["id"], i["image_url"], i["prompt"]) for i in feed.json()["items"]] == [
        (str(shared), "https://cdn.example.test/alice/3.png", None)
    ]


async def test_a_user_with_no_images_gets_an_empty_page(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    response = await client.get("/v1/images", headers=auth_headers(CAROL))

    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


BAD_CURSORS = [
    "not a cursor!",
    "%%%",
    base64.urlsafe_b64encode(b"\xff\xfe garbage").decode(),
    _cursor(["a", "list"]),
    _cursor({"id": str(uuid.uuid4())}),
    _cursor({"t": "2026-01-01T00:00:00+00:00"}),
    _cursor({"t": "yesterday", "id": str(uuid.uuid4())}),
    _cursor({"t": "2026-01-01T00:00:00", "id": str(uuid.uuid4())}),  # no time zone
    _cursor({"t": "2026-01-01T00:00:00+00:00", "id": "not-a-uuid"}),
    _cursor({"t": 5, "id": 7}),
    # valid where they are written, out of range once in UTC (the database compares in UTC)
    _cursor({"t": "9999-12-31T23:59:59-10:00", "id": str(uuid.uuid4())}),
    _cursor({"t": "0001-01-01T00:00:00+10:00", "id": str(uuid.uuid4())}),
]


@pytest.mark.parametrize("path", ["/v1/images", "/v1/feed", "/v1/prompts", "/v1/packs"])
async def test_a_cursor_the_api_did_not_hand_out_is_a_400_problem(
    client: httpx.AsyncClient, auth_headers: Headers, path: str
) -> None:
    for cursor in BAD_CURSORS:
        response = await client.get(path, params={"cursor": cursor}, headers=auth_headers(ALICE))

        assert_problem(response, 400)


@pytest.mark.parametrize("path", ["/v1/images", "/v1/feed"])
async def test_a_limit_out_of_bounds_is_a_422_problem(
    client: httpx.AsyncClient, auth_headers: Headers, path: str
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
    ]  # an overlong cursor is a foreign one: 400 (tests/api/test_cursor_attacks.py)
    for params, field in cases:
        response = await client.get(path, params=params, headers=auth_headers(ALICE))

        body = assert_problem(response, 422)
        assert [e["loc"] for e in body["errors"]] == [["query", field]], body


async def test_the_page_size_is_limit_and_100_is_allowed(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    for _ in range(3):
        await insert_image(db, ALICE)

    one = await client.get("/v1/images", params={"limit": 1}, headers=auth_headers(ALICE))
    most = await client.get("/v1/images", params={"limit": 100}, headers=auth_headers(ALICE))

    assert len(one.json()["items"]) == 1 and one.json()["next_cursor"]
    assert len(most.json()["items"]) == 3 and most.json()["next_cursor"] is None


async def test_listings_need_a_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/images"), 401)
    assert_problem(await client.get("/v1/feed"), 401)
