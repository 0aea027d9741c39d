"""The mobile app's statements still run unchanged after the gallery migration (likes, packs,
the feed's NOTIFY trigger), and the service shows the rows the app wrote as they are."""

from __future__ import annotations

import json
from collections.abc import Callable

import asyncpg
import httpx

from app.config import Settings
from app.db.migrate import migrate
from app.main import create_app
from tests.fakes.mobile_app import (
    DELETE_PROMPT,
    INSERT_IMAGE,
    INSERT_PROMPT,
    LIST_IMAGES,
    POSTGREST_INSERT_IMAGE,
    apply_baseline,
    run_mobile_app_statements,
    seed_live_rows,
)
from tests.fakes.running import running
from tests.gallery.conftest import Headers, ensure_user, insert_image
from tests.support.polling import wait_until


async def test_the_apps_statements_run_on_an_empty_database_after_the_gallery_migration(
    db: asyncpg.Connection,
) -> None:
    assert await db.fetchval("SELECT to_regclass('image_likes') IS NOT NULL")
    assert await db.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'generated_images_notify_feed'"
    )
    await run_mobile_app_statements(db)
    await run_mobile_app_statements(db)


async def test_the_apps_statements_run_while_the_feed_is_listened_to(
    db: asyncpg.Connection, db_url: str
) -> None:
    """The app's plain inserts go through the trigger (private: nothing announced), and its
    inserts of rows made public right away announce without failing."""
    listener = await asyncpg.connect(db_url)
    heard: list[str] = []
    await listener.add_listener("atelier_feed", lambda *args: heard.append(args[-1]))
    try:
        await run_mobile_app_statements(db)
        user = "user_compat_public"
        await ensure_user(db, user)
        # An insert naming visibility (as a newer app build might) and a long URL.
        row = await db.fetchrow(
            "INSERT INTO generated_images (user_id, image_url, visibility) "
            "VALUES ($1, $2, 'public') RETURNING *",
            user,
            "https://cdn.example.test/" + "p" * 9000,
        )
        assert row is not None
        await db.execute("SELECT pg_notify('atelier_feed', 'end')")
        await wait_until(lambda: bool(heard) and heard[-1] == "end", "the end marker")
    finally:
        await listener.close()
    assert len(heard) == 2, heard
    announced = json.loads(heard[0])
    assert (announced["type"], announced["id"]) == ("image", str(row["id"]))


async def test_the_live_databases_rows_show_in_the_api_and_the_apps_statements_still_run(
    empty_url: str,
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
) -> None:
    url = empty_url
    conn = await asyncpg.connect(url)
    try:
        await apply_baseline(conn)
        await seed_live_rows(conn)
        await run_mobile_app_statements(conn)
        before_images = [dict(r) for r in await conn.fetch(LIST_IMAGES, "user_2live_alice")]
        before_prompts = [
            dict(r)
            for r in await conn.fetch(
                "SELECT * FROM custom_prompts WHERE user_id = 'user_2live_dave' "
                "ORDER BY created_at DESC, id DESC"
            )
        ]
        await migrate(conn)
        await run_mobile_app_statements(conn)

        async with running(create_app(make_settings(database_url=url))) as client:
            images = await client.get("/v1/images", headers=auth_headers("user_2live_alice"))
            prompts = await client.get("/v1/prompts", headers=auth_headers("user_2live_dave"))
            # The API's own writes on the live rows, then the app's statements once more.
            image_id = before_images[0]["id"]
            shared = await client.patch(
                f"/v1/images/{image_id}",
                json={"visibility": "public"},
                headers=auth_headers("user_2live_alice"),
            )
            liked = await client.put(
                f"/v1/images/{image_id}/like", headers=auth_headers("user_2live_carol")
            )
            feed = await client.get("/v1/feed", headers=auth_headers("user_2live_bob"))
        await run_mobile_app_statements(conn)
        # The app reads its images back, and deletes a prompt, as ever.
        after_images = [dict(r) for r in await conn.fetch(LIST_IMAGES, "user_2live_alice")]
        deleted = await conn.execute(DELETE_PROMPT, before_prompts[0]["id"], "user_2live_dave")
    finally:
        await conn.close()

    assert images.status_code == 200, images.text
    assert [(i["id"], i["image_url"], i["prompt"]) for i in images.json()["items"]] == [
        (str(r["id"]), r["image_url"], None) for r in before_images
    ]
    assert prompts.status_code == 200, prompts.text
    assert [
        (p["id"], p["title"], p["prompt_text"], p["thumbnail_url"], p["secondary_image_url"])
        for p in prompts.json()["items"]
    ] == [
        (str(r["id"]), r["title"], r["prompt_text"], r["thumbnail_url"], r["secondary_image_url"])
        for r in before_prompts
    ]
    assert shared.status_code == 200 and liked.json() == {"liked": True, "likes_count": 1}
    assert [i["id"] for i in feed.json()["items"]] == [str(image_id)]
    # Every column the app knows is as it was.
    known = ("id", "user_id", "image_url", "created_at")
    assert [{k: r[k] for k in known} for r in after_images] == [
        {k: r[k] for k in known} for r in before_images
    ]
    assert deleted == "DELETE 1"


async def test_the_app_deleting_a_liked_image_takes_its_likes_with_it(
    db: asyncpg.Connection,
) -> None:
    """The app deletes its rows with a plain DELETE; likes (a table it does not know) must
    not stand in its way."""
    owner, fan = "user_compat_owner", "user_compat_fan"
    image = await insert_image(db, owner, visibility="public")
    await ensure_user(db, fan)
    await db.execute("INSERT INTO image_likes (image_id, user_id) VALUES ($1, $2)", image, fan)

    status = await db.execute(
        "DELETE FROM generated_images WHERE id = $1 AND user_id = $2", image, owner
    )

    assert status == "DELETE 1"
    assert await db.fetchval("SELECT count(*) FROM image_likes WHERE image_id = $1", image) == 0


async def test_the_apps_postgrest_and_plain_inserts_list_in_the_api(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    user = "user_compat_lister"
    await ensure_user(db, user)
    plain = await db.fetchrow(INSERT_IMAGE, user, "https://cdn.example.test/l/1.png")
    await db.fetchval(
        POSTGREST_INSERT_IMAGE,
        json.dumps({"user_id": user, "image_url": "https://cdn.example.test/l/2.png"}),
        column=2,
    )
    prompt = await db.fetchrow(INSERT_PROMPT, user, "a prompt", None, None, None)
    assert plain is not None and prompt is not None

    images = await client.get("/v1/images", headers=auth_headers(user))
    prompts = await client.get("/v1/prompts", headers=auth_headers(user))

    assert sorted(i["image_url"] for i in images.json()["items"]) == [
        "https://cdn.example.test/l/1.png",
        "https://cdn.example.test/l/2.png",
    ]
    assert [p["id"] for p in prompts.json()["items"]] == [str(prompt["id"])]
