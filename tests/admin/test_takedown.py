"""DELETE /v1/admin/images/{id}: an administrator takes down anyone's image by the gallery's
one deletion path: the row, its likes and the stored object go, and an open feed is told
`removed` (over a real HTTP stream)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg
import httpx

from app.config import Settings
from app.main import create_app
from tests.admin.conftest import ADMIN
from tests.gallery.conftest import (
    insert_image,
    like_rows,
    services_of,
    storage_key_of,
    store_object,
)
from tests.gallery.test_feed_events import feed_stream
from tests.support.live import live_server
from tests.support.polling import DEADLINE_SECONDS
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
OWNER, VIEWER = "user_td_owner", "user_td_viewer"


async def test_an_admin_takes_down_another_users_public_image_and_the_feed_hears_of_it(
    make_settings: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    app = create_app(make_settings(admin_user_ids=[ADMIN], worker_in_process=False))
    image_id = await insert_image(db, OWNER, visibility="public", prompt="something unkind")
    kept = await insert_image(db, OWNER, visibility="public", prompt="something kind")
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=DEADLINE_SECONDS) as client,
    ):
        storage = services_of(app).storage
        key = await storage_key_of(db, image_id)
        await store_object(storage, key)
        liked = await client.put(f"/v1/images/{image_id}/like", headers=auth_headers(VIEWER))
        assert liked.status_code == 200, liked.text

        async with feed_stream(client, auth_headers(VIEWER)) as stream:
            response = await client.delete(
                f"/v1/admin/images/{image_id}", headers=auth_headers(ADMIN)
            )
            assert response.status_code == 204, response.text
            event, _ = await stream.next_named("removed")
            assert event.json() == {"id": str(image_id)}

        assert (
            await db.fetchval("SELECT count(*) FROM generated_images WHERE id = $1", image_id) == 0
        )
        assert await like_rows(db, image_id) == []
        assert not await storage.exists(key)
        assert await db.fetchval("SELECT count(*) FROM generated_images WHERE id = $1", kept) == 1

        again = await client.delete(f"/v1/admin/images/{image_id}", headers=auth_headers(ADMIN))
        assert_problem(again, 404)
        unknown = await client.delete(
            f"/v1/admin/images/{uuid.uuid4()}", headers=auth_headers(ADMIN)
        )
        assert_problem(unknown, 404)
        # the owner's own route is unchanged: someone else's image is still theirs alone
        other = await client.delete(f"/v1/images/{kept}", headers=auth_headers(VIEWER))
        assert_problem(other, 404)
