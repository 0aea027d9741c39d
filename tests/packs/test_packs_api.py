"""/v1/packs: create, list, read with icons, update, delete; filing icons in and out; and
another user's pack: a public one (icons, all public) reads for anyone signed in, as its
export does, and its icons page on at /v1/feed?pack_id; everything else is a 404 (writes to
a public pack and a generation into it included)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.db import images as images_db
from app.services import pack_marks
from app.services.storage.base import ObjectNotFound
from tests.support.locks import until_a_lock_wait
from tests.support.polling import DEADLINE_SECONDS
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
ALICE, BOB = "user_alice", "user_bob"


# -- helpers --------------------------------------------------------------------------------


async def ensure_user(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get("/v1/me", headers=headers)
    assert response.status_code == 200, response.text


async def insert_image(
    db: asyncpg.Connection,
    user_id: str,
    *,
    seconds_ago: int = 0,
    visibility: str = "private",
    pack_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """An image row of the user's, `seconds_ago` old (the user must exist)."""
    image_id = uuid.uuid4()
    await db.execute(
        """
        INSERT INTO generated_images (id, user_id, image_url, prompt, visibility, pack_id,
                                      created_at)
        VALUES ($1, $2, $3, 'an icon', $4, $5, now() - make_interval(secs => $6))
        """,
        image_id,
        user_id,
        f"https://cdn.example.test/{image_id}.png",
        visibility,
        pack_id,
        seconds_ago,
    )
    return image_id


async def pack_of(db: asyncpg.Connection, image_id: uuid.UUID) -> uuid.UUID | None:
    row = await db.fetchrow("SELECT pack_id FROM generated_images WHERE id = $1", image_id)
    assert row is not None, f"image {image_id} is gone"
    pack_id: uuid.UUID | None = row["pack_id"]
    return pack_id


async def pack_row(db: asyncpg.Connection, pack_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT user_id, name, style_prompt, cover_image_id FROM icon_packs WHERE id = $1",
        uuid.UUID(pack_id),
    )
    return dict(row) if row is not None else None


async def create_pack(
    client: httpx.AsyncClient, headers: dict[str, str], **fields: Any
) -> dict[str, Any]:
    body = {"name": "Space", **fields}
    response = await client.post("/v1/packs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    pack: dict[str, Any] = response.json()
    return pack


async def get_pack(
    client: httpx.AsyncClient, headers: dict[str, str], pack_id: str, **params: Any
) -> dict[str, Any]:
    response = await client.get(f"/v1/packs/{pack_id}", headers=headers, params=params)
    assert response.status_code == 200, response.text
    pack: dict[str, Any] = response.json()
    return pack


async def add_icon(
    client: httpx.AsyncClient, headers: dict[str, str], pack_id: str, image_id: uuid.UUID
) -> httpx.Response:
    return await client.post(
        f"/v1/packs/{pack_id}/icons", json={"image_id": str(image_id)}, headers=headers
    )


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


# -- create ---------------------------------------------------------------------------------


async def test_creating_a_pack_answers_201_with_the_empty_pack(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    response = await client.post(
        "/v1/packs",
        json={"name": "Weather", "style_prompt": "flat pastel icons"},
        headers=auth_headers(ALICE),
    )

    assert response.status_code == 201, response.text
    pack = response.json()
    assert response.headers["location"] == f"/v1/packs/{pack['id']}"
    assert set(pack) == {
        "id",
        "name",
        "style_prompt",
        "cover_image_id",
        "icon_count",
        "created_at",
        "updated_at",
    }
    assert pack["name"] == "Weather"
    assert pack["style_prompt"] == "flat pastel icons"
    assert pack["cover_image_id"] is None
    assert pack["icon_count"] == 0
    assert await pack_row(db, pack["id"]) == {
        "user_id": ALICE,
        "name": "Weather",
        "style_prompt": "flat pastel icons",
        "cover_image_id": None,
    }


async def test_a_pack_needs_no_style_prompt_and_takes_the_longest_allowed_values(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    plain = await create_pack(client, headers, name="n")
    longest = await create_pack(client, headers, name="é" * 100, style_prompt="s" * 1000)

    assert plain["style_prompt"] is None
    assert longest["name"] == "é" * 100
    assert longest["style_prompt"] == "s" * 1000


INVALID_CREATES: list[tuple[str, dict[str, Any]]] = [
    ("no name", {"style_prompt": "flat"}),
    ("null name", {"name": None}),
    ("empty name", {"name": ""}),
    ("blank name", {"name": "   "}),
    ("name of 101 characters", {"name": "x" * 101}),
    ("name with NUL", {"name": "a\x00b"}),
    ("style prompt of 1001 characters", {"name": "n", "style_prompt": "s" * 1001}),
    ("style prompt with NUL", {"name": "n", "style_prompt": "flat\x00"}),
    ("unknown field", {"name": "n", "color": "red"}),
    ("user_id smuggled in", {"name": "n", "user_id": BOB}),
]


async def test_an_invalid_pack_is_422_and_creates_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    for case, body in INVALID_CREATES:
        response = await client.post("/v1/packs", json=body, headers=headers)
        assert response.status_code == 422, (case, response.text)
        assert_problem(response, 422)

    assert await db.fetchval("SELECT count(*) FROM icon_packs") == 0


async def test_packs_need_a_signed_in_user(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/packs"), 401)
    assert_problem(await client.post("/v1/packs", json={"name": "n"}), 401)


# -- list -----------------------------------------------------------------------------------


async def test_the_list_is_the_callers_packs_newest_first_in_keyset_pages_with_icon_counts(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    made = [await create_pack(client, alice, name=f"pack {i}") for i in range(5)]
    await create_pack(client, bob, name="bob's")
    icons = {made[1]["id"]: 2, made[3]["id"]: 1}
    for pack_id, count in icons.items():
        for _ in range(count):
            await insert_image(db, ALICE, pack_id=uuid.UUID(pack_id))
    deleted = await insert_image(db, ALICE, pack_id=uuid.UUID(made[3]["id"]))
    await db.execute("UPDATE generated_images SET deleted_at = now() WHERE id = $1", deleted)

    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/packs", params=params, headers=alice)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "the cursor never ends"

    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [item for page in pages for item in page]
    assert ids(listed) == ids(made)[::-1]
    assert {p["id"]: p["icon_count"] for p in listed} == {
        p["id"]: icons.get(p["id"], 0) for p in made
    }
    everything = await client.get("/v1/packs", params={"limit": 100}, headers=alice)
    assert ids(everything.json()["items"]) == ids(made)[::-1]
    assert everything.json()["next_cursor"] is None


async def test_a_pack_made_after_a_page_was_read_does_not_shift_the_next_page(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    made = [await create_pack(client, headers, name=f"pack {i}") for i in range(3)]
    first = (await client.get("/v1/packs", params={"limit": 2}, headers=headers)).json()
    await create_pack(client, headers, name="newer")
    second = await client.get(
        "/v1/packs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=headers
    )

    assert ids(first["items"]) == [made[2]["id"], made[1]["id"]]
    assert ids(second.json()["items"]) == [made[0]["id"]]


async def test_a_cursor_the_api_did_not_hand_out_is_400(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    # not base64 JSON; an object without a position; JSON null; a position without a zone
    naive = json.dumps({"t": "2026-01-01T00:00:00", "id": str(uuid.uuid4())}).encode()
    for cursor in ["not-a-cursor!", "e30", "bnVsbA", base64.urlsafe_b64encode(naive).decode()]:
        response = await client.get("/v1/packs", params={"cursor": cursor}, headers=headers)
        assert response.status_code == 400, (cursor, response.text)
        assert_problem(response, 400)


# -- read -----------------------------------------------------------------------------------


async def test_a_pack_reads_with_its_icons_newest_first_and_pages_on_in_the_gallery(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    pack = await create_pack(client, headers, style_prompt="thick outlines")
    pack_id = uuid.UUID(pack["id"])
    oldest = await insert_image(db, ALICE, seconds_ago=30, pack_id=pack_id)
    newest = await insert_image(db, ALICE, seconds_ago=10, pack_id=pack_id)
    middle = await insert_image(db, ALICE, seconds_ago=20, pack_id=pack_id)
    await insert_image(db, ALICE, seconds_ago=5)  # in the gallery, not in the pack
    other = await create_pack(client, headers, name="other")
    await insert_image(db, ALICE, seconds_ago=1, pack_id=uuid.UUID(other["id"]))

    whole = await get_pack(client, headers, pack["id"])
    limited = await get_pack(client, headers, pack["id"], icons_limit=2)
    rest = await client.get(
        "/v1/images",
        params={"pack_id": pack["id"], "cursor": limited["icons_next_cursor"]},
        headers=headers,
    )

    assert whole["icon_count"] == 3
    assert whole["style_prompt"] == "thick outlines"
    assert ids(whole["icons"]) == [str(newest), str(middle), str(oldest)]
    assert all(icon["pack_id"] == pack["id"] and icon["mine"] for icon in whole["icons"])
    assert whole["icons_next_cursor"] is None
    assert ids(limited["icons"]) == [str(newest), str(middle)]
    assert limited["icon_count"] == 3
    assert rest.status_code == 200, rest.text
    assert ids(rest.json()["items"]) == [str(oldest)]
    assert rest.json()["next_cursor"] is None


async def test_an_icons_limit_out_of_range_is_422(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    pack = await create_pack(client, headers)

    for icons_limit in (0, 101, "x"):
        response = await client.get(
            f"/v1/packs/{pack['id']}", params={"icons_limit": icons_limit}, headers=headers
        )
        assert response.status_code == 422, (icons_limit, response.text)
        assert_problem(response, 422)


async def test_a_pack_that_does_not_exist_is_404_and_a_malformed_id_is_422(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)

    assert_problem(await client.get(f"/v1/packs/{uuid.uuid4()}", headers=headers), 404)
    assert_problem(await client.get("/v1/packs/not-a-uuid", headers=headers), 422)


# -- update ---------------------------------------------------------------------------------


async def test_an_update_changes_only_the_fields_sent(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    pack = await create_pack(client, headers, name="Space", style_prompt="flat")
    url = f"/v1/packs/{pack['id']}"
    cover = await insert_image(db, ALICE)

    renamed = await client.patch(url, json={"name": "Outer space"}, headers=headers)
    restyled = await client.patch(url, json={"style_prompt": "thick outlines"}, headers=headers)
    covered = await client.patch(url, json={"cover_image_id": str(cover)}, headers=headers)
    untouched = await client.patch(url, json={}, headers=headers)

    for response in (renamed, restyled, covered, untouched):
        assert response.status_code == 200, response.text
    assert (renamed.json()["name"], renamed.json()["style_prompt"]) == ("Outer space", "flat")
    assert (restyled.json()["name"], restyled.json()["style_prompt"]) == (
        "Outer space",
        "thick outlines",
    )
    assert covered.json()["cover_image_id"] == str(cover)
    assert covered.json()["style_prompt"] == "thick outlines"
    assert {k: v for k, v in untouched.json().items() if k != "updated_at"} == {
        k: v for k, v in covered.json().items() if k != "updated_at"
    }
    assert moment(renamed.json()["updated_at"]) > moment(pack["updated_at"])
    assert renamed.json()["created_at"] == pack["created_at"]
    assert await pack_row(db, pack["id"]) == {
        "user_id": ALICE,
        "name": "Outer space",
        "style_prompt": "thick outlines",
        "cover_image_id": cover,
    }
    assert (await get_pack(client, headers, pack["id"]))["cover_image_id"] == str(cover)


async def test_null_clears_the_style_prompt_and_the_cover(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    pack = await create_pack(client, headers, name="Space", style_prompt="flat")
    url = f"/v1/packs/{pack['id']}"
    cover = await insert_image(db, ALICE)
    await client.patch(url, json={"cover_image_id": str(cover)}, headers=headers)

    response = await client.patch(
        url, json={"style_prompt": None, "cover_image_id": None}, headers=headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["style_prompt"] is None
    assert response.json()["cover_image_id"] is None
    assert response.json()["name"] == "Space"
    assert await pack_row(db, pack["id"]) == {
        "user_id": ALICE,
        "name": "Space",
        "style_prompt": None,
        "cover_image_id": None,
    }


INVALID_UPDATES: list[tuple[str, dict[str, Any]]] = [
    ("null name", {"name": None}),
    ("empty name", {"name": ""}),
    ("blank name", {"name": " \t "}),
    ("name of 101 characters", {"name": "x" * 101}),
    ("name with NUL", {"name": "a\x00"}),
    ("style prompt of 1001 characters", {"style_prompt": "s" * 1001}),
    ("style prompt with NUL", {"style_prompt": "\x00"}),
    ("malformed cover", {"cover_image_id": "nope"}),
    ("unknown field", {"icon_count": 9}),
    ("null name beside a valid change", {"name": None, "style_prompt": "new"}),
]


async def test_an_invalid_update_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    pack = await create_pack(client, headers, name="Space", style_prompt="flat")

    for case, body in INVALID_UPDATES:
        response = await client.patch(f"/v1/packs/{pack['id']}", json=body, headers=headers)
        assert response.status_code == 422, (case, response.text)
        problem = assert_problem(response, 422)
        # one error, named as sent (no validator's name, no second "Input should be None")
        assert len(problem.get("errors", [])) <= 1, (case, problem)
        for error in problem.get("errors", []):
            assert error["loc"][:2] == ["body", next(iter(body))], (case, problem)

    assert await pack_row(db, pack["id"]) == {
        "user_id": ALICE,
        "name": "Space",
        "style_prompt": "flat",
        "cover_image_id": None,
    }


async def test_a_cover_must_be_one_of_the_callers_own_images(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    await ensure_user(client, alice)
    await ensure_user(client, bob)
    pack = await create_pack(client, alice, name="Space")
    url = f"/v1/packs/{pack['id']}"
    own = await insert_image(db, ALICE)
    await client.patch(url, json={"cover_image_id": str(own)}, headers=alice)
    bobs_public = await insert_image(db, BOB, visibility="public")
    own_deleted = await insert_image(db, ALICE)
    await db.execute("UPDATE generated_images SET deleted_at = now() WHERE id = $1", own_deleted)

    for cover in (bobs_public, own_deleted, uuid.uuid4()):
        response = await client.patch(
            url, json={"cover_image_id": str(cover), "name": "renamed"}, headers=alice
        )
        assert_problem(response, 404)

    assert await pack_row(db, pack["id"]) == {
        "user_id": ALICE,
        "name": "Space",
        "style_prompt": None,
        "cover_image_id": own,
    }


# -- delete ---------------------------------------------------------------------------------


async def test_deleting_a_pack_keeps_its_icons_in_the_gallery_outside_any_pack(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    pack = await create_pack(client, headers)
    kept = await create_pack(client, headers, name="kept")
    icons = [await insert_image(db, ALICE, pack_id=uuid.UUID(pack["id"])) for _ in range(2)]
    elsewhere = await insert_image(db, ALICE, pack_id=uuid.UUID(kept["id"]))

    response = await client.delete(f"/v1/packs/{pack['id']}", headers=headers)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert await pack_row(db, pack["id"]) is None
    assert [await pack_of(db, icon) for icon in icons] == [None, None]
    assert await pack_of(db, elsewhere) == uuid.UUID(kept["id"])
    gallery = (await client.get("/v1/images", headers=headers)).json()["items"]
    by_id = {item["id"]: item for item in gallery}
    assert {str(i) for i in icons} <= set(by_id)
    assert all(by_id[str(i)]["pack_id"] is None for i in icons)
    assert_problem(await client.get(f"/v1/packs/{pack['id']}", headers=headers), 404)
    assert ids((await client.get("/v1/packs", headers=headers)).json()["items"]) == [kept["id"]]
    assert_problem(await client.delete(f"/v1/packs/{pack['id']}", headers=headers), 404)


# -- icons ----------------------------------------------------------------------------------


async def test_adding_an_icon_files_the_callers_image_into_the_pack(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    pack = await create_pack(client, headers)
    image = await insert_image(db, ALICE)
    other = await insert_image(db, ALICE)

    response = await add_icon(client, headers, pack["id"], image)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert await pack_of(db, image) == uuid.UUID(pack["id"])
    assert await pack_of(db, other) is None
    read = await get_pack(client, headers, pack["id"])
    assert read["icon_count"] == 1
    assert ids(read["icons"]) == [str(image)]
    listed = (await client.get("/v1/packs", headers=headers)).json()["items"]
    assert listed[0]["icon_count"] == 1
    filtered = await client.get("/v1/images", params={"pack_id": pack["id"]}, headers=headers)
    assert ids(filtered.json()["items"]) == [str(image)]
    one = await client.get(f"/v1/images/{image}", headers=headers)
    assert one.json()["pack_id"] == pack["id"]


async def test_adding_an_icon_again_or_from_another_pack_moves_it_and_counts_it_once(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    first = await create_pack(client, headers, name="first")
    second = await create_pack(client, headers, name="second")
    image = await insert_image(db, ALICE, pack_id=uuid.UUID(first["id"]))

    again = await add_icon(client, headers, first["id"], image)
    moved = await add_icon(client, headers, second["id"], image)

    assert again.status_code == 204, again.text
    assert moved.status_code == 204, moved.text
    assert await pack_of(db, image) == uuid.UUID(second["id"])
    assert (await get_pack(client, headers, first["id"]))["icon_count"] == 0
    assert (await get_pack(client, headers, second["id"]))["icon_count"] == 1


async def test_adding_another_users_image_or_a_missing_one_is_404_and_files_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    await ensure_user(client, alice)
    await ensure_user(client, bob)
    pack = await create_pack(client, alice)
    bobs_public = await insert_image(db, BOB, visibility="public")
    bobs_private = await insert_image(db, BOB)
    own_deleted = await insert_image(db, ALICE)
    await db.execute("UPDATE generated_images SET deleted_at = now() WHERE id = $1", own_deleted)

    for image in (bobs_public, bobs_private, own_deleted, uuid.uuid4()):
        assert_problem(await add_icon(client, alice, pack["id"], image), 404)

    assert [await pack_of(db, i) for i in (bobs_public, bobs_private, own_deleted)] == [None] * 3
    assert (await get_pack(client, alice, pack["id"]))["icon_count"] == 0


async def test_an_invalid_icon_body_is_422(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    pack = await create_pack(client, headers)

    for body in ({}, {"image_id": "nope"}, {"image_id": str(uuid.uuid4()), "extra": 1}):
        response = await client.post(f"/v1/packs/{pack['id']}/icons", json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert_problem(response, 422)


async def test_removing_an_icon_takes_it_out_of_the_pack_and_keeps_it_in_the_gallery(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    pack = await create_pack(client, headers)
    other = await create_pack(client, headers, name="other")
    icon = await insert_image(db, ALICE, pack_id=uuid.UUID(pack["id"]))
    stays = await insert_image(db, ALICE, pack_id=uuid.UUID(pack["id"]))
    in_other = await insert_image(db, ALICE, pack_id=uuid.UUID(other["id"]))
    loose = await insert_image(db, ALICE)
    url = f"/v1/packs/{pack['id']}/icons"

    response = await client.delete(f"{url}/{icon}", headers=headers)

    assert response.status_code == 204, response.text
    assert await pack_of(db, icon) is None
    read = await get_pack(client, headers, pack["id"])
    assert (read["icon_count"], ids(read["icons"])) == (1, [str(stays)])
    one = await client.get(f"/v1/images/{icon}", headers=headers)
    assert one.status_code == 200 and one.json()["pack_id"] is None
    # not (or no longer) in this pack: 404, and nothing moves
    for image in (icon, in_other, loose, uuid.uuid4()):
        assert_problem(await client.delete(f"{url}/{image}", headers=headers), 404)
    assert await pack_of(db, in_other) == uuid.UUID(other["id"])
    assert await pack_of(db, stays) == uuid.UUID(pack["id"])


async def test_an_icon_filed_in_moved_taken_out_or_deleted_marks_its_packs_updated(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    await ensure_user(client, alice)
    await ensure_user(client, bob)
    first = await create_pack(client, alice, name="first")
    second = await create_pack(client, alice, name="second")
    image = await insert_image(db, ALICE)
    doomed = await insert_image(db, ALICE)
    bobs = await insert_image(db, BOB, visibility="public")

    async def updated(pack: dict[str, Any]) -> datetime:
        return moment((await get_pack(client, alice, pack["id"]))["updated_at"])

    assert (await add_icon(client, alice, first["id"], image)).status_code == 204
    added = await updated(first)
    assert (await add_icon(client, alice, first["id"], image)).status_code == 204
    again = await updated(first)  # already there: nothing changed
    assert_problem(await add_icon(client, alice, first["id"], bobs), 404)
    refused = await updated(first)
    assert (await add_icon(client, alice, second["id"], image)).status_code == 204
    moved_out, moved_in = await updated(first), await updated(second)
    removed = await client.delete(f"/v1/packs/{second['id']}/icons/{image}", headers=alice)
    assert removed.status_code == 204, removed.text
    taken_out = await updated(second)
    assert (await add_icon(client, alice, second["id"], doomed)).status_code == 204
    before_shown = await updated(second)

    async def show(visibility: str) -> None:
        shown = await client.patch(
            f"/v1/images/{doomed}", json={"visibility": visibility}, headers=alice
        )
        assert shown.status_code == 200, shown.text

    await show("public")  # what other users see of the pack changed
    shown = await updated(second)
    await show("public")
    shown_again = await updated(second)  # no change
    assert (await client.delete(f"/v1/images/{doomed}", headers=alice)).status_code == 204
    deleted = await updated(second)

    assert moment(first["created_at"]) < added == again == refused < moved_out
    assert moment(second["created_at"]) < moved_in < taken_out < before_shown < shown
    assert shown == shown_again < deleted
    assert (await get_pack(client, alice, second["id"]))["icon_count"] == 0


async def test_a_pack_held_by_another_transaction_leaves_its_mark_not_the_deletion(
    app: FastAPI,
    client: httpx.AsyncClient,
    db_url: str,
    db: asyncpg.Connection,
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Marking the pack is best effort and waits for it briefly: an icon deleted while
    another client holds its pack (a long transaction, the mobile app's rename) is deleted,
    its stored object too, and answered 204; only the mark is lost, and logged."""
    monkeypatch.setattr(pack_marks, "WAIT_SECONDS", 0.3)
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    pack = await create_pack(client, headers)
    made = await client.post(
        "/v1/generations",
        json={"prompt": "a kept fox", "pack_id": pack["id"]},
        headers={**headers, "Prefer": "wait=10"},
    )
    assert made.status_code == 200, made.text
    icon = made.json()["image"]["id"]
    key = await db.fetchval(
        "SELECT storage_key FROM generated_images WHERE id = $1", uuid.UUID(icon)
    )
    holder = await asyncpg.connect(db_url)
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM icon_packs WHERE id = $1 FOR UPDATE", uuid.UUID(pack["id"])
            )
            with caplog.at_level(logging.WARNING, logger="atelier.packs"):
                deleted = await asyncio.wait_for(
                    client.delete(f"/v1/images/{icon}", headers=headers), DEADLINE_SECONDS
                )
    finally:
        await holder.close()

    assert deleted.status_code == 204, deleted.text
    assert (
        await db.fetchval("SELECT count(*) FROM generated_images WHERE id = $1", uuid.UUID(icon))
        == 0
    )
    storage = app.state.services.storage
    with pytest.raises(ObjectNotFound):
        await storage.get(key)
    assert any("not marked updated" in r.getMessage() for r in caplog.records)


# -- another user's pack --------------------------------------------------------------------


@pytest.mark.parametrize("visibility", ["private", "public"])
async def test_another_users_pack_is_404_to_every_write_and_stays_as_it_was(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers, visibility: str
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    await ensure_user(client, alice)
    await ensure_user(client, bob)
    pack = await create_pack(client, alice, name="Alice's", style_prompt="flat")
    url = f"/v1/packs/{pack['id']}"
    alices_icon = await insert_image(
        db, ALICE, pack_id=uuid.UUID(pack["id"]), visibility=visibility
    )
    bobs_image = await insert_image(db, BOB)
    read = await client.get(url, headers=bob)

    answers = [
        await client.patch(url, json={"name": "Bob's now"}, headers=bob),
        await client.patch(url, json={"style_prompt": None}, headers=bob),
        await client.patch(url, json={"cover_image_id": str(bobs_image)}, headers=bob),
        await add_icon(client, bob, pack["id"], bobs_image),
        await client.delete(f"{url}/icons/{alices_icon}", headers=bob),
        await client.delete(url, headers=bob),
    ]
    bobs_list = await client.get("/v1/packs", headers=bob)
    bobs_filter = await client.get("/v1/images", params={"pack_id": pack["id"]}, headers=bob)

    for response in answers:
        body = assert_problem(response, 404)
        assert "Alice" not in body.get("detail", "")
    if visibility == "public":  # reads as its export does; it is still not Bob's
        assert read.status_code == 200, read.text
        assert [icon["mine"] for icon in read.json()["icons"]] == [False]
    else:
        assert_problem(read, 404)
    assert bobs_list.json()["items"] == []
    assert bobs_filter.json()["items"] == []
    assert await pack_row(db, pack["id"]) == {
        "user_id": ALICE,
        "name": "Alice's",
        "style_prompt": "flat",
        "cover_image_id": None,
    }
    assert await pack_of(db, alices_icon) == uuid.UUID(pack["id"])
    assert await pack_of(db, bobs_image) is None
    assert (await get_pack(client, alice, pack["id"]))["icon_count"] == 1


async def test_a_generation_into_another_users_pack_is_404_and_charges_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    await ensure_user(client, bob)
    pack = await create_pack(client, alice, style_prompt="flat")
    before = await db.fetchval("SELECT credits FROM users WHERE id = $1", BOB)

    into_alices = await client.post(
        "/v1/generations", json={"prompt": "a rocket", "pack_id": pack["id"]}, headers=bob
    )
    into_none = await client.post(
        "/v1/generations", json={"prompt": "a rocket", "pack_id": str(uuid.uuid4())}, headers=bob
    )

    assert_problem(into_alices, 404)
    assert_problem(into_none, 404)
    assert await db.fetchval("SELECT credits FROM users WHERE id = $1", BOB) == before
    assert await db.fetchval("SELECT count(*) FROM image_generation_jobs") == 0
    assert await db.fetchval("SELECT count(*) FROM credit_ledger WHERE job_id IS NOT NULL") == 0


# -- a public pack, read by others ---------------------------------------------------------


async def test_a_public_pack_reads_for_anyone_signed_in_and_its_icons_page_on_in_the_feed(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    await ensure_user(client, alice)
    await ensure_user(client, bob)
    pack = await create_pack(client, alice, name="Weather", style_prompt="flat pastel")
    pack_id = uuid.UUID(pack["id"])
    oldest = await insert_image(db, ALICE, seconds_ago=30, visibility="public", pack_id=pack_id)
    newest = await insert_image(db, ALICE, seconds_ago=10, visibility="public", pack_id=pack_id)
    middle = await insert_image(db, ALICE, seconds_ago=20, visibility="public", pack_id=pack_id)
    # public too, but not this pack's: neither in the pack's page nor in its feed
    await insert_image(db, ALICE, seconds_ago=5, visibility="public")
    other = await create_pack(client, alice, name="other")
    await insert_image(
        db, ALICE, seconds_ago=1, visibility="public", pack_id=uuid.UUID(other["id"])
    )

    whole = await get_pack(client, bob, pack["id"])
    limited = await get_pack(client, bob, pack["id"], icons_limit=2)
    rest = await client.get(
        "/v1/feed",
        params={"pack_id": pack["id"], "cursor": limited["icons_next_cursor"]},
        headers=bob,
    )
    feed = await client.get("/v1/feed", params={"pack_id": pack["id"]}, headers=bob)
    exported = await client.get(f"/v1/packs/{pack['id']}/export", headers=bob)

    assert {k: v for k, v in whole.items() if k not in ("icons", "icons_next_cursor")} == {
        k: v for k, v in pack.items() if k != "icon_count"
    } | {"icon_count": 3}
    assert ids(whole["icons"]) == [str(newest), str(middle), str(oldest)]
    assert not any(icon["mine"] for icon in whole["icons"])
    assert ids(limited["icons"]) == [str(newest), str(middle)]
    assert rest.status_code == 200, rest.text
    assert ids(rest.json()["items"]) == [str(oldest)]
    assert rest.json()["next_cursor"] is None
    assert feed.status_code == 200, feed.text
    assert ids(feed.json()["items"]) == [str(newest), str(middle), str(oldest)]
    assert exported.status_code == 200  # the same pack, by the same rule
    # the owner's view is unchanged: her own icons, hers
    assert all(icon["mine"] for icon in (await get_pack(client, alice, pack["id"]))["icons"])


async def test_a_pack_reads_for_others_exactly_when_it_exports_for_them(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    await ensure_user(client, alice)
    await ensure_user(client, bob)
    packs = {name: await create_pack(client, alice, name=name) for name in PACK_KINDS}
    for name, visibilities in PACK_KINDS.items():
        for visibility in visibilities:
            await insert_image(
                db, ALICE, visibility=visibility, pack_id=uuid.UUID(packs[name]["id"])
            )
    deleted = await insert_image(
        db,
        ALICE,
        visibility="private",
        pack_id=uuid.UUID(packs["public, a private one deleted"]["id"]),
    )
    await db.execute("UPDATE generated_images SET deleted_at = now() WHERE id = $1", deleted)

    for name, pack in packs.items():
        read = await client.get(f"/v1/packs/{pack['id']}", headers=bob)
        exported = await client.get(f"/v1/packs/{pack['id']}/export", headers=bob)
        public = "public" in name.split(",")[0]
        assert read.status_code == exported.status_code == (200 if public else 404), name
        if not public:
            assert_problem(read, 404)
        feed = await client.get("/v1/feed", params={"pack_id": pack["id"]}, headers=bob)
        # the feed never shows a private icon, whatever the pack
        assert len(feed.json()["items"]) == PACK_KINDS[name].count("public"), name


PACK_KINDS = {
    "public": ["public", "public"],
    "public, a private one deleted": ["public"],
    "private": ["private"],
    "half private": ["public", "private"],
    "empty": [],
}


async def test_another_users_private_cover_stays_hidden_in_their_public_pack(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    await ensure_user(client, alice)
    await ensure_user(client, bob)
    pack = await create_pack(client, alice)
    url = f"/v1/packs/{pack['id']}"
    icon = await insert_image(db, ALICE, visibility="public", pack_id=uuid.UUID(pack["id"]))
    private = await insert_image(db, ALICE)  # not in the pack: a cover may be any of hers

    await client.patch(url, json={"cover_image_id": str(private)}, headers=alice)
    hidden = await get_pack(client, bob, pack["id"])
    await client.patch(url, json={"cover_image_id": str(icon)}, headers=alice)
    shown = await get_pack(client, bob, pack["id"])

    assert hidden["cover_image_id"] is None
    assert (await get_pack(client, alice, pack["id"]))["cover_image_id"] == str(icon)
    assert shown["cover_image_id"] == str(icon)


async def test_the_feed_of_a_pack_that_does_not_exist_is_empty_and_a_malformed_id_is_422(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    await insert_image(db, ALICE, visibility="public")  # in the feed, in no pack

    empty = await client.get("/v1/feed", params={"pack_id": str(uuid.uuid4())}, headers=headers)
    malformed = await client.get("/v1/feed", params={"pack_id": "nope"}, headers=headers)

    assert empty.status_code == 200, empty.text
    assert empty.json() == {"items": [], "next_cursor": None}
    assert_problem(malformed, 422)


# -- races with a deletion ------------------------------------------------------------------


async def test_filing_an_icon_into_a_pack_being_deleted_is_404_not_an_error(
    client: httpx.AsyncClient, db_url: str, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    pack = await create_pack(client, headers)
    image = await insert_image(db, ALICE)
    deleter = await asyncpg.connect(db_url)
    try:
        deleting = deleter.transaction()
        await deleting.start()
        await deleter.execute("DELETE FROM icon_packs WHERE id = $1", uuid.UUID(pack["id"]))
        request = asyncio.create_task(add_icon(client, headers, pack["id"], image))
        await until_a_lock_wait(db, "the request to wait on the deletion", request)
        await deleting.commit()
        response = await asyncio.wait_for(request, DEADLINE_SECONDS)
    finally:
        await deleter.close()

    assert_problem(response, 404)
    assert await pack_of(db, image) is None


async def test_a_cover_deleted_while_it_is_being_set_is_404_not_an_error(
    client: httpx.AsyncClient, db_url: str, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    pack = await create_pack(client, headers, name="Space")
    cover = await insert_image(db, ALICE)
    deleter = await asyncpg.connect(db_url)
    try:
        deleting = deleter.transaction()
        await deleting.start()
        await deleter.execute("DELETE FROM generated_images WHERE id = $1", cover)
        request = asyncio.create_task(
            client.patch(
                f"/v1/packs/{pack['id']}",
                json={"cover_image_id": str(cover), "name": "renamed"},
                headers=headers,
            )
        )
        await until_a_lock_wait(db, "the request to wait on the deletion", request)
        await deleting.commit()
        response = await asyncio.wait_for(request, DEADLINE_SECONDS)
    finally:
        await deleter.close()

    assert_problem(response, 404)
    assert await pack_row(db, pack["id"]) == {
        "user_id": ALICE,
        "name": "Space",
        "style_prompt": None,
        "cover_image_id": None,
    }


async def test_taking_an_icon_out_of_a_pack_being_deleted_neither_waits_nor_deadlocks(
    client: httpx.AsyncClient, db_url: str, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """The deletion holds the pack and waits for the icon's row, which the other side holds:
    taking the icon out must not wait for the pack in turn (a deadlock); the pack is marked
    updated only after that has committed (`packs.touch`)."""
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    pack = await create_pack(client, headers)
    pack_id = uuid.UUID(pack["id"])
    icon = await insert_image(db, ALICE, pack_id=pack_id)
    remover = await asyncpg.connect(db_url)
    try:
        removing = remover.transaction()
        await removing.start()
        await remover.execute("SELECT 1 FROM generated_images WHERE id = $1 FOR UPDATE", icon)
        deletion = asyncio.create_task(client.delete(f"/v1/packs/{pack['id']}", headers=headers))
        await until_a_lock_wait(db, "the deletion to wait on the icon", deletion)
        taken_out = await asyncio.wait_for(
            images_db.set_pack(remover, icon, ALICE, None, only_from=pack_id), DEADLINE_SECONDS
        )
        await removing.commit()
        deleted = await asyncio.wait_for(deletion, DEADLINE_SECONDS)
    finally:
        await remover.close()

    assert taken_out is not None
    assert deleted.status_code == 204, deleted.text
    assert await pack_row(db, pack["id"]) is None
    assert await pack_of(db, icon) is None


async def test_deleting_icons_that_are_each_others_packs_covers_does_not_deadlock(
    client: httpx.AsyncClient, db_url: str, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """X is in pack P and Q's cover, Y in Q and P's cover (a cover may be any of the owner's
    images). A deletion takes only the pack whose cover it clears, and marks its own pack
    after it has committed: when each deletion also held its own pack, two of them waited
    for each other's."""
    headers = auth_headers(ALICE)
    await ensure_user(client, headers)
    p, q = [uuid.UUID((await create_pack(client, headers, name=n))["id"]) for n in ("P", "Q")]
    x = await insert_image(db, ALICE, pack_id=p)
    y = await insert_image(db, ALICE, pack_id=q)
    cover = "UPDATE icon_packs SET cover_image_id = $1 WHERE id = $2"
    await db.execute(cover, x, q)
    await db.execute(cover, y, p)
    holder = await asyncpg.connect(db_url)
    try:
        holding = holder.transaction()
        await holding.start()
        # P held, as a deletion clearing P's cover holds it: Y's deletion waits for it.
        await holder.execute("SELECT 1 FROM icon_packs WHERE id = $1 FOR NO KEY UPDATE", p)
        deleting = asyncio.create_task(client.delete(f"/v1/images/{y}", headers=headers))
        await until_a_lock_wait(db, "Y's deletion to wait for P", deleting)
        await asyncio.wait_for(images_db.delete(holder, x, ALICE), DEADLINE_SECONDS)
        await holding.commit()
        deleted = await asyncio.wait_for(deleting, DEADLINE_SECONDS)
    finally:
        await holder.close()

    assert deleted.status_code == 204, deleted.text
    left = await db.fetch("SELECT cover_image_id FROM icon_packs WHERE id = ANY($1)", [p, q])
    assert [r["cover_image_id"] for r in left] == [None, None]
    assert (
        await db.fetchval("SELECT count(*) FROM generated_images WHERE id = ANY($1)", [x, y]) == 0
    )
