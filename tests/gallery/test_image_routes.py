"""One image: GET (own or public), PATCH (visibility), DELETE (own: the row, its likes and the
stored object), and GET …/download (a short-lived URL that serves the bytes). Another user's
private image is a 404 on every route, and nothing about it changes."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
from fastapi import FastAPI

from app.config import Settings
from tests.gallery.conftest import (
    Headers,
    ensure_user,
    generate,
    insert_image,
    insert_mobile_image,
    like_rows,
    services_of,
    storage_key_of,
    store_object,
)
from tests.support.documented import assert_documented_headers
from tests.support.problems import assert_problem

ALICE, BOB, CAROL = "user_img_alice", "user_img_bob", "user_img_carol"


def local_path(url: str) -> str:
    """The path and query of a signed URL, to GET through the app's own client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def image_row(db: asyncpg.Connection, image_id: uuid.UUID) -> dict[str, object] | None:
    row = await db.fetchrow("SELECT * FROM generated_images WHERE id = $1", image_id)
    return dict(row) if row is not None else None


async def test_an_owner_reads_their_private_image_and_anyone_reads_a_public_one(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    private = await insert_image(db, ALICE, prompt="a secret garden")
    public = await insert_image(db, ALICE, visibility="public", prompt="an open field")

    own = await client.get(f"/v1/images/{private}", headers=auth_headers(ALICE))
    shared = await client.get(f"/v1/images/{public}", headers=auth_headers(BOB))

    assert own.status_code == 200, own.text
    assert own.json()["id"] == str(private)
    assert own.json()["prompt"] == "a secret garden"
    assert own.json()["visibility"] == "private" and own.json()["mine"] is True
    assert shared.status_code == 200, shared.text
    assert shared.json()["prompt"] == "an open field"
    assert shared.json()["mine"] is False and shared.json()["liked_by_me"] is False


async def test_another_users_private_image_is_a_404_on_every_route(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE)
    key = await storage_key_of(db, image)
    await store_object(services_of(app).storage, key)
    await ensure_user(db, BOB)
    await db.execute("INSERT INTO image_likes (image_id, user_id) VALUES ($1, $2)", image, ALICE)
    await db.execute("UPDATE generated_images SET likes_count = 1 WHERE id = $1", image)
    before = await image_row(db, image)
    bob = auth_headers(BOB)

    responses = [
        await client.get(f"/v1/images/{image}", headers=bob),
        await client.patch(f"/v1/images/{image}", json={"visibility": "public"}, headers=bob),
        await client.delete(f"/v1/images/{image}", headers=bob),
        await client.get(f"/v1/images/{image}/download", headers=bob),
        await client.put(f"/v1/images/{image}/like", headers=bob),
        await client.delete(f"/v1/images/{image}/like", headers=bob),
    ]
    anonymous = await client.get(f"/v1/images/{image}/download", params={"redirect": "false"})

    for response in responses:
        assert_problem(response, 404)
    assert_problem(anonymous, 401)  # no token: told to send one, not whether it exists
    # Nothing about it changed: the row, its like, its object.
    assert await image_row(db, image) == before
    assert await like_rows(db, image) == [ALICE]
    assert await services_of(app).storage.exists(key)


async def test_an_unknown_or_malformed_image_id_is_a_problem(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    missing = uuid.uuid4()

    assert_problem(await client.get(f"/v1/images/{missing}", headers=headers), 404)
    assert_problem(await client.delete(f"/v1/images/{missing}", headers=headers), 404)
    assert_problem(await client.get(f"/v1/images/{missing}/download", headers=headers), 404)
    assert_problem(await client.get("/v1/images/not-a-uuid", headers=headers), 422)
    assert_problem(await client.get(f"/v1/images/{missing}"), 401)


async def test_patch_makes_an_image_public_and_private_again(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE)
    alice, bob = auth_headers(ALICE), auth_headers(BOB)

    published = await client.patch(
        f"/v1/images/{image}", json={"visibility": "public"}, headers=alice
    )
    feed = await client.get("/v1/feed", headers=bob)
    seen_by_bob = await client.get(f"/v1/images/{image}", headers=bob)
    hidden = await client.patch(
        f"/v1/images/{image}", json={"visibility": "private"}, headers=alice
    )
    feed_after = await client.get("/v1/feed", headers=bob)

    assert published.status_code == 200, published.text
    assert published.json()["visibility"] == "public" and published.json()["mine"] is True
    assert [i["id"] for i in feed.json()["items"]] == [str(image)]
    assert seen_by_bob.status_code == 200
    assert hidden.status_code == 200 and hidden.json()["visibility"] == "private"
    assert feed_after.json()["items"] == []
    assert_problem(await client.get(f"/v1/images/{image}", headers=bob), 404)
    assert (
        await db.fetchval("SELECT visibility FROM generated_images WHERE id = $1", image)
        == "private"
    )


async def test_patch_with_a_bad_body_is_a_422_problem_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE)
    headers = auth_headers(ALICE)
    before = await image_row(db, image)

    for body in ({"visibility": "everyone"}, {}, {"visibility": "public", "prompt": "new"}):
        response = await client.patch(f"/v1/images/{image}", json=body, headers=headers)
        assert_problem(response, 422)

    assert await image_row(db, image) == before


async def test_patching_another_users_public_image_is_a_404(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE, visibility="public")

    response = await client.patch(
        f"/v1/images/{image}", json={"visibility": "private"}, headers=auth_headers(BOB)
    )

    assert_problem(response, 404)
    assert (
        await db.fetchval("SELECT visibility FROM generated_images WHERE id = $1", image)
        == "public"
    )


async def test_delete_removes_the_row_its_likes_and_the_stored_object(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    auth_headers: Headers,
    settings: Settings,
) -> None:
    alice = auth_headers(ALICE)
    job = await generate(client, alice, visibility="public")
    image = uuid.UUID(job["image"]["id"])
    key = await storage_key_of(db, image)
    stored = Path(settings.objects_dir) / key
    assert stored.is_file()
    for liker in (ALICE, BOB, CAROL):
        liked = await client.put(f"/v1/images/{image}/like", headers=auth_headers(liker))
        assert liked.status_code == 200, liked.text
    other = await generate(client, alice)  # stays
    assert await like_rows(db, image) == sorted([ALICE, BOB, CAROL])

    deleted = await client.delete(f"/v1/images/{image}", headers=alice)
    again = await client.delete(f"/v1/images/{image}", headers=alice)

    assert deleted.status_code == 204, deleted.text
    assert deleted.content == b""
    assert_problem(again, 404)
    assert await image_row(db, image) is None
    assert await like_rows(db, image) == []
    assert not stored.exists()
    assert_problem(await client.get(f"/v1/images/{image}", headers=alice), 404)
    listed = await client.get("/v1/images", headers=alice)
    assert [i["id"] for i in listed.json()["items"]] == [other["image"]["id"]]
    assert (
        Path(settings.objects_dir) / await storage_key_of(db, uuid.UUID(other["image"]["id"]))
    ).is_file()


async def test_deleting_another_users_image_is_a_404_and_changes_nothing(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    auth_headers: Headers,
    settings: Settings,
) -> None:
    job = await generate(client, auth_headers(ALICE), visibility="public")
    image = uuid.UUID(job["image"]["id"])
    liked = await client.put(f"/v1/images/{image}/like", headers=auth_headers(BOB))
    assert liked.status_code == 200
    before = await image_row(db, image)

    response = await client.delete(f"/v1/images/{image}", headers=auth_headers(BOB))

    assert_problem(response, 404)
    assert await image_row(db, image) == before
    assert await like_rows(db, image) == [BOB]
    assert (Path(settings.objects_dir) / await storage_key_of(db, image)).is_file()


async def test_deleting_a_mobile_app_row_without_an_object_works(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_mobile_image(db, ALICE, "https://cdn.example.test/alice/9.png")

    response = await client.delete(f"/v1/images/{image}", headers=auth_headers(ALICE))

    assert response.status_code == 204, response.text
    assert await image_row(db, image) is None


async def test_download_redirects_to_a_short_lived_url_that_serves_the_bytes(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers, settings: Settings
) -> None:
    headers = auth_headers(ALICE)
    job = await generate(client, headers)
    image = uuid.UUID(job["image"]["id"])
    stored = (Path(settings.objects_dir) / await storage_key_of(db, image)).read_bytes()

    redirect = await client.get(f"/v1/images/{image}/download", headers=headers)
    as_json = await client.get(
        f"/v1/images/{image}/download", params={"redirect": "false"}, headers=headers
    )

    assert redirect.status_code == 307, redirect.text
    assert redirect.headers["cache-control"] == "no-store"
    spec = (await client.get("/openapi.json")).json()
    assert_documented_headers(spec, "GET", "/v1/images/{image_id}/download", redirect)
    location = redirect.headers["location"]
    assert location.startswith(settings.public_base_url.rstrip("/") + "/files/")
    served = await client.get(local_path(location))
    assert served.status_code == 200, served.text
    assert served.headers["content-type"] == "image/png"
    assert served.content == stored
    assert as_json.status_code == 200, as_json.text
    link = as_json.json()
    assert set(link) == {"url", "expires_in"}
    assert 0 < link["expires_in"] <= 3600
    assert (await client.get(local_path(link["url"]))).content == stored
    # The link is signed: altering the key it names is refused.
    tampered = local_path(link["url"]).replace(str(job["id"]), str(uuid.uuid4()))
    assert_problem(await client.get(tampered), 403)


async def test_a_public_image_downloads_without_a_token_and_a_private_one_does_not(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    storage = services_of(app).storage
    public = await insert_image(db, ALICE, visibility="public")
    private = await insert_image(db, ALICE)
    public_bytes = await store_object(storage, await storage_key_of(db, public))
    await store_object(storage, await storage_key_of(db, private))

    anonymous = await client.get(f"/v1/images/{public}/download")
    by_bob = await client.get(f"/v1/images/{public}/download", headers=auth_headers(BOB))
    private_anonymous = await client.get(f"/v1/images/{private}/download")
    private_bob = await client.get(f"/v1/images/{private}/download", headers=auth_headers(BOB))
    bad_token = await client.get(
        f"/v1/images/{public}/download", headers={"Authorization": "Bearer nonsense"}
    )

    assert anonymous.status_code == 307, anonymous.text
    assert (await client.get(local_path(anonymous.headers["location"]))).content == public_bytes
    assert by_bob.status_code == 307
    assert_problem(private_anonymous, 401)
    assert_problem(private_bob, 404)
    assert_problem(bad_token, 401)


async def test_a_mobile_app_rows_download_is_its_own_url(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_mobile_image(db, ALICE, "https://cdn.example.test/alice/5.png")

    redirect = await client.get(f"/v1/images/{image}/download", headers=auth_headers(ALICE))
    as_json = await client.get(
        f"/v1/images/{image}/download",
        params={"redirect": "false"},
        headers=auth_headers(ALICE),
    )

    assert redirect.status_code == 307
    assert redirect.headers["location"] == "https://cdn.example.test/alice/5.png"
    assert as_json.json()["url"] == "https://cdn.example.test/alice/5.png"


async def test_a_deleted_images_job_no_longer_links_to_it(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    job = await generate(client, alice)
    assert job["image"] is not None

    assert (
        await client.delete(f"/v1/images/{job['image']['id']}", headers=alice)
    ).status_code == 204
    after = await client.get(f"/v1/jobs/{job['id']}", headers=alice)

    assert after.status_code == 200
    # still completed (it was, and was charged), but it no longer points at a removed object
    assert (after.json()["status"], after.json()["image"]) == ("completed", None)


async def test_a_new_public_images_urls_and_key_carry_no_user_id(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    owner = "user_img_identifiable_owner"
    job = await generate(client, auth_headers(owner), visibility="public")
    image = uuid.UUID(job["image"]["id"])
    viewer = auth_headers(BOB)

    key = await storage_key_of(db, image)
    stored_url = await db.fetchval("SELECT image_url FROM generated_images WHERE id = $1", image)
    feed = (await client.get("/v1/feed", headers=viewer)).json()["items"]
    one = (await client.get(f"/v1/images/{image}", headers=viewer)).json()
    link = (await client.get(f"/v1/images/{image}/download", params={"redirect": "false"})).json()

    assert key == f"generations/{job['id']}.png"
    for url in (key, stored_url, job["image"]["url"], feed[0]["image_url"], one["image_url"]):
        assert owner not in url, url
    assert owner not in link["url"] and "/files/generations/" in link["url"]


async def test_deleting_an_image_stored_under_the_old_per_user_key_removes_its_object(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE)
    old_key = f"generations/{ALICE}/{uuid.uuid4()}.png"  # as keys were before
    await db.execute("UPDATE generated_images SET storage_key = $1 WHERE id = $2", old_key, image)
    storage = services_of(app).storage
    await store_object(storage, old_key)

    response = await client.delete(f"/v1/images/{image}", headers=auth_headers(ALICE))

    assert response.status_code == 204, response.text
    assert not await storage.exists(old_key)
