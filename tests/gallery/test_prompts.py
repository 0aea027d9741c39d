"""/v1/prompts: the caller's saved prompts (`custom_prompts`, shared with the mobile app):
create, read, list (keyset pages), update (only the fields sent), delete; limits with clear
problems; another user's prompt is a 404; the mobile app's rows appear exactly as written."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.fakes.mobile_app import INSERT_PROMPT, LIST_PROMPTS, PRISMA_CREATE_PROMPT
from tests.gallery.conftest import Headers, ensure_user
from tests.support.problems import assert_problem

ALICE, BOB = "user_prompt_alice", "user_prompt_bob"
FULL = {
    "title": "Fox",
    "prompt_text": "a watercolor fox in the snow",
    "thumbnail_url": "https://cdn.example.test/fox/thumb.png",
    "secondary_image_url": "http://cdn.example.test/fox/second.png",
}


async def stored(db: asyncpg.Connection, prompt_id: uuid.UUID | str) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM custom_prompts WHERE id = $1", uuid.UUID(str(prompt_id)))
    return dict(row) if row is not None else None


def as_api(row: dict[str, Any]) -> dict[str, Any]:
    """A custom_prompts row as the API shows it (created_at compared apart: same_instant)."""
    return {
        "id": str(row["id"]),
        "title": row["title"],
        "prompt_text": row["prompt_text"],
        "thumbnail_url": row["thumbnail_url"],
        "secondary_image_url": row["secondary_image_url"],
        "created_at": row["created_at"],
    }


def same_instant(api: dict[str, Any], row: dict[str, Any]) -> bool:
    return bool(datetime.fromisoformat(api["created_at"]) == row["created_at"])


async def test_a_prompt_is_created_read_updated_and_deleted(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)

    created = await client.post("/v1/prompts", json=FULL, headers=headers)

    assert created.status_code == 201, created.text
    body = created.json()
    assert {k: body[k] for k in FULL} == FULL
    row = await stored(db, body["id"])
    assert row is not None and row["user_id"] == ALICE
    assert {k: row[k] for k in FULL} == FULL
    assert same_instant(body, row)

    assert created.headers["location"] == f"/v1/prompts/{body['id']}"
    read = await client.get(created.headers["location"], headers=headers)
    assert read.status_code == 200 and read.json() == body

    changed = await client.patch(
        f"/v1/prompts/{body['id']}",
        json={"prompt_text": "a watercolor fox at night", "thumbnail_url": None},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json() == {
        **body,
        "prompt_text": "a watercolor fox at night",
        "thumbnail_url": None,
    }
    assert (await client.get(f"/v1/prompts/{body['id']}", headers=headers)).json() == (
        changed.json()
    )

    deleted = await client.delete(f"/v1/prompts/{body['id']}", headers=headers)
    assert deleted.status_code == 204 and deleted.content == b""
    assert await stored(db, body["id"]) is None
    assert_problem(await client.get(f"/v1/prompts/{body['id']}", headers=headers), 404)
    assert_problem(await client.delete(f"/v1/prompts/{body['id']}", headers=headers), 404)


async def test_only_prompt_text_is_required(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    response = await client.post(
        "/v1/prompts", json={"prompt_text": "just the text"}, headers=auth_headers(ALICE)
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["title"], body["thumbnail_url"], body["secondary_image_url"]) == (None,) * 3


async def test_the_list_pages_through_the_callers_prompts_newest_first(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    await ensure_user(db, ALICE)
    await ensure_user(db, BOB)
    at = datetime(2026, 4, 1, tzinfo=UTC)
    ids: list[tuple[datetime, str]] = []
    for n in range(9):
        when = at + timedelta(seconds=n // 2)  # pairs share a created_at
        prompt_id = await db.fetchval(
            "INSERT INTO custom_prompts (user_id, prompt_text, created_at) VALUES ($1, $2, $3) "
            "RETURNING id",
            ALICE,
            f"prompt {n}",
            when,
        )
        ids.append((when, str(prompt_id)))
    await db.execute(
        "INSERT INTO custom_prompts (user_id, prompt_text) VALUES ($1, 'bob''s own')", BOB
    )
    expected = [i for _, i in sorted(ids, reverse=True)]

    seen: list[str] = []
    cursor = None
    for _ in range(20):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await client.get("/v1/prompts", params=params, headers=auth_headers(ALICE))
        assert page.status_code == 200, page.text
        seen += [p["id"] for p in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
        # a prompt saved meanwhile (newer) neither repeats nor pushes anything out
        await client.post("/v1/prompts", json={"prompt_text": "new"}, headers=auth_headers(ALICE))

    assert seen == expected
    assert_problem(
        await client.get("/v1/prompts", params={"cursor": "junk"}, headers=auth_headers(ALICE)),
        400,
    )
    assert_problem(
        await client.get("/v1/prompts", params={"limit": 0}, headers=auth_headers(ALICE)), 422
    )


async def test_another_users_prompt_is_a_404_and_stays_as_it_was(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    created = await client.post("/v1/prompts", json=FULL, headers=auth_headers(ALICE))
    prompt_id = created.json()["id"]
    before = await stored(db, prompt_id)
    bob = auth_headers(BOB)

    assert_problem(await client.get(f"/v1/prompts/{prompt_id}", headers=bob), 404)
    assert_problem(
        await client.patch(f"/v1/prompts/{prompt_id}", json={"title": "Mine"}, headers=bob), 404
    )
    assert_problem(await client.delete(f"/v1/prompts/{prompt_id}", headers=bob), 404)
    listed = await client.get("/v1/prompts", headers=bob)
    assert listed.json() == {"items": [], "next_cursor": None}
    assert await stored(db, prompt_id) == before
    assert_problem(await client.get(f"/v1/prompts/{uuid.uuid4()}", headers=bob), 404)
    assert_problem(await client.get("/v1/prompts/not-a-uuid", headers=bob), 422)
    assert_problem(await client.get("/v1/prompts"), 401)


INVALID: list[tuple[dict[str, Any], str]] = [
    ({**FULL, "title": "t" * 201}, "title"),
    ({**FULL, "title": ""}, "title"),
    ({**FULL, "title": "   "}, "title"),
    ({**FULL, "prompt_text": ""}, "prompt_text"),
    ({**FULL, "prompt_text": " \t\n "}, "prompt_text"),
    ({**FULL, "prompt_text": "\u200b"}, "prompt_text"),  # shows nothing: blank as well
    ({**FULL, "prompt_text": "p" * 2001}, "prompt_text"),
    ({**FULL, "prompt_text": "nul \x00 inside"}, "prompt_text"),
    ({**FULL, "title": "nul \x00"}, "title"),
    ({"title": "no text"}, "prompt_text"),
    ({**FULL, "prompt_text": None}, "prompt_text"),
    ({**FULL, "thumbnail_url": "ftp://cdn.example.test/a.png"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "javascript:alert(1)"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://cdn.example.test/" + "a" * 2030}, "thumbnail_url"),
    ({**FULL, "secondary_image_url": "/relative.png"}, "secondary_image_url"),
    # no host, or one no URL can have: malformed, however it starts
    ({**FULL, "thumbnail_url": "http://"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https:///thumb.png"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://:443/thumb.png"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://user@/thumb.png"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://cdn example.test/thumb.png"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://cdn\u00a0example.test/thumb.png"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://cdn.example.test\\thumb.png"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://cdn.example.test:99999/thumb.png"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://cdn.example.test:port/thumb.png"}, "thumbnail_url"),
    ({**FULL, "thumbnail_url": "https://cdn.example.test\n"}, "thumbnail_url"),
    ({**FULL, "secondary_image_url": "http://?query"}, "secondary_image_url"),
    ({**FULL, "user_id": BOB}, "user_id"),
]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_invalid_fields_are_a_422_problem_naming_the_field(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers, method: str
) -> None:
    headers = auth_headers(ALICE)
    created = await client.post("/v1/prompts", json=FULL, headers=headers)
    prompt_id = created.json()["id"]
    before = await stored(db, prompt_id)

    for body, field in INVALID:
        if method == "PATCH" and field == "prompt_text" and "prompt_text" not in body:
            continue  # a PATCH need not send it
        if method == "POST":
            response = await client.post("/v1/prompts", json=body, headers=headers)
        else:
            response = await client.patch(f"/v1/prompts/{prompt_id}", json=body, headers=headers)

        problem = assert_problem(response, 422)
        assert field in problem["detail"], (body, problem)
        if "errors" in problem:  # one error, named as sent (no validator's name, no "None")
            assert [e["loc"] for e in problem["errors"]] == [["body", field]], problem
            assert problem["detail"].startswith(f"{field}: "), problem

    assert await db.fetchval("SELECT count(*) FROM custom_prompts WHERE user_id = $1", ALICE) == 1
    assert await stored(db, prompt_id) == before


async def test_the_limits_themselves_are_accepted(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    body = {
        "title": "t" * 200,
        "prompt_text": "\U0001f98a" * 2000,
        "thumbnail_url": "https://cdn.example.test/" + "a" * (2048 - 25),
        "secondary_image_url": "http://x.test/",
    }
    assert len(body["thumbnail_url"]) == 2048

    response = await client.post("/v1/prompts", json=body, headers=auth_headers(ALICE))

    assert response.status_code == 201, response.text
    assert {k: response.json()[k] for k in body} == body


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example.test",
        "https://cdn.example.test:8443/a/thumb.png?size=64&v=2#top",
        "http://user:pw@cdn.example.test:0/thumb.png",
        "https://CDN.Example.TEST./thumb%20one.png",
        "https://cdn_1.example.test/a thumb (1).png",
        "https://bücher.example.test/thumb.png",
        "http://127.0.0.1:65535/thumb.png",
        "http://[2001:db8::1]/thumb.png",
    ],
)
async def test_any_http_url_with_a_host_is_accepted_and_kept_as_sent(
    client: httpx.AsyncClient, auth_headers: Headers, url: str
) -> None:
    body = {"prompt_text": "a fox", "thumbnail_url": url, "secondary_image_url": url}

    response = await client.post("/v1/prompts", json=body, headers=auth_headers(ALICE))

    assert response.status_code == 201, response.text
    assert {k: response.json()[k] for k in body} == body


async def test_the_mobile_apps_prompts_appear_unchanged(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    await ensure_user(db, ALICE)
    written = [
        await db.fetchrow(
            INSERT_PROMPT,
            ALICE,
            "a watercolor fox in the snow",
            "Fox",
            "https://cdn.example.test/a/thumb.png",
            "https://cdn.example.test/a/second.png",
        ),
        await db.fetchrow(INSERT_PROMPT, ALICE, "just the text", None, None, None),
        await db.fetchrow(
            PRISMA_CREATE_PROMPT, ALICE, "neon city at dusk", "Neon", datetime.now(UTC)
        ),
        # What the app's own checks never stopped: text longer than the API allows, a
        # thumbnail that is no URL at all. Shown as stored, never rewritten.
        await db.fetchrow(INSERT_PROMPT, ALICE, "x" * 5000, "", "thumbs/local.png", None),
    ]
    rows = [dict(r) for r in written if r is not None]
    assert len(rows) == 4

    listed = await client.get("/v1/prompts", params={"limit": 100}, headers=auth_headers(ALICE))

    assert listed.status_code == 200, listed.text
    items = {p["id"]: p for p in listed.json()["items"]}
    assert items.keys() == {str(r["id"]) for r in rows}
    for row in rows:
        item = items[str(row["id"])]
        assert {k: item[k] for k in FULL} == {k: row[k] for k in FULL}
        assert same_instant(item, row)
    app_order = [str(r["id"]) for r in await db.fetch(LIST_PROMPTS, ALICE)]
    assert [p["id"] for p in listed.json()["items"]] == app_order


async def test_patching_the_title_leaves_every_other_field_as_the_app_wrote_it(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    await ensure_user(db, ALICE)
    row = await db.fetchrow(
        INSERT_PROMPT,
        ALICE,
        "pixel art of my cat",
        None,
        "https://cdn.example.test/cat/thumb.png",
        "https://cdn.example.test/cat/second.png",
    )
    assert row is not None
    before = dict(row)

    response = await client.patch(
        f"/v1/prompts/{row['id']}", json={"title": "Cat"}, headers=auth_headers(ALICE)
    )

    assert response.status_code == 200, response.text
    after = await stored(db, row["id"])
    assert after == {**before, "title": "Cat"}
    shown = response.json()
    assert {k: v for k, v in shown.items() if k != "created_at"} == {
        k: v for k, v in as_api({**before, "title": "Cat"}).items() if k != "created_at"
    }
    assert same_instant(shown, before)

    # Clearing the title again (null) is allowed; clearing prompt_text is not.
    cleared = await client.patch(
        f"/v1/prompts/{row['id']}", json={"title": None}, headers=auth_headers(ALICE)
    )
    assert cleared.status_code == 200 and cleared.json()["title"] is None
    problem = assert_problem(
        await client.patch(
            f"/v1/prompts/{row['id']}", json={"prompt_text": None}, headers=auth_headers(ALICE)
        ),
        422,
    )
    assert "prompt_text" in problem["detail"]
    assert await stored(db, row["id"]) == before
