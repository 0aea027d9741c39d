"""PUT/DELETE /v1/images/{id}/like: idempotent per user, answering `liked` and `likes_count`;
the count moves with the like row, so it equals the rows however many users race."""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg
import httpx
from fastapi import FastAPI

from app.schemas.gallery import LikeState
from app.services import gallery
from tests.gallery.conftest import (
    Headers,
    ensure_user,
    insert_image,
    insert_mobile_image,
    like_rows,
    likes_count,
    services_of,
)
from tests.support.locks import until_a_lock_wait
from tests.support.problems import assert_problem

ALICE, BOB, CAROL = "user_like_alice", "user_like_bob", "user_like_carol"


async def test_liking_twice_counts_once_and_unliking_twice_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE, visibility="public")
    bob, carol = auth_headers(BOB), auth_headers(CAROL)
    path = f"/v1/images/{image}/like"

    first = await client.put(path, headers=bob)
    second = await client.put(path, headers=bob)
    by_carol = await client.put(path, headers=carol)

    assert first.status_code == 200, first.text
    assert first.json() == {"liked": True, "likes_count": 1}
    assert second.json() == {"liked": True, "likes_count": 1}
    assert by_carol.json() == {"liked": True, "likes_count": 2}
    assert await like_rows(db, image) == [BOB, CAROL]
    assert await likes_count(db, image) == 2

    undone = await client.delete(path, headers=bob)
    undone_again = await client.delete(path, headers=bob)

    assert undone.status_code == 200, undone.text
    assert undone.json() == {"liked": False, "likes_count": 1}
    assert undone_again.json() == {"liked": False, "likes_count": 1}
    assert await like_rows(db, image) == [CAROL]
    assert await likes_count(db, image) == 1


async def test_unliking_an_image_never_liked_leaves_the_count_alone(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE, visibility="public")
    liked = await client.put(f"/v1/images/{image}/like", headers=auth_headers(CAROL))
    assert liked.status_code == 200

    response = await client.delete(f"/v1/images/{image}/like", headers=auth_headers(BOB))

    assert response.status_code == 200, response.text
    assert response.json() == {"liked": False, "likes_count": 1}
    assert await likes_count(db, image) == 1


async def test_an_owner_may_like_their_own_private_image(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE)

    response = await client.put(f"/v1/images/{image}/like", headers=auth_headers(ALICE))

    assert response.json() == {"liked": True, "likes_count": 1}


async def test_liking_another_users_private_or_a_missing_image_is_a_404(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE)
    bob = auth_headers(BOB)

    assert_problem(await client.put(f"/v1/images/{image}/like", headers=bob), 404)
    assert_problem(await client.delete(f"/v1/images/{image}/like", headers=bob), 404)
    assert_problem(await client.put(f"/v1/images/{uuid.uuid4()}/like", headers=bob), 404)
    assert_problem(await client.put(f"/v1/images/{image}/like"), 401)
    assert await like_rows(db, image) == []
    assert await likes_count(db, image) == 0


async def test_a_mobile_app_image_made_public_can_be_liked(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_mobile_image(db, ALICE, "https://cdn.example.test/alice/like.png")
    await db.execute("UPDATE generated_images SET visibility = 'public' WHERE id = $1", image)

    response = await client.put(f"/v1/images/{image}/like", headers=auth_headers(BOB))

    assert response.json() == {"liked": True, "likes_count": 1}


async def test_liked_by_me_is_per_viewer_in_listings_and_reads(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    liked = await insert_image(db, ALICE, visibility="public")
    other = await insert_image(db, ALICE, visibility="public")
    put = await client.put(f"/v1/images/{liked}/like", headers=auth_headers(BOB))
    assert put.status_code == 200

    def flags(page: httpx.Response) -> dict[str, tuple[bool, int]]:
        return {i["id"]: (i["liked_by_me"], i["likes_count"]) for i in page.json()["items"]}

    as_bob = await client.get("/v1/feed", headers=auth_headers(BOB))
    as_carol = await client.get("/v1/feed", headers=auth_headers(CAROL))
    as_alice = await client.get("/v1/images", headers=auth_headers(ALICE))
    one_as_bob = await client.get(f"/v1/images/{liked}", headers=auth_headers(BOB))
    one_as_carol = await client.get(f"/v1/images/{liked}", headers=auth_headers(CAROL))

    assert flags(as_bob) == {str(liked): (True, 1), str(other): (False, 0)}
    assert flags(as_carol) == {str(liked): (False, 1), str(other): (False, 0)}
    assert flags(as_alice) == {str(liked): (False, 1), str(other): (False, 0)}
    assert one_as_bob.json()["liked_by_me"] is True
    assert one_as_carol.json()["liked_by_me"] is False


async def test_deleting_a_user_takes_their_likes_off_the_counts(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    first = await insert_image(db, ALICE, visibility="public")
    second = await insert_image(db, ALICE, visibility="public")
    for user, image in ((BOB, first), (BOB, second), (CAROL, first)):
        liked = await client.put(f"/v1/images/{image}/like", headers=auth_headers(user))
        assert liked.status_code == 200, liked.text

    # As the mobile app, an admin tool or an erasure would: the likes go by cascade.
    await db.execute("DELETE FROM users WHERE id = $1", BOB)

    assert await like_rows(db, first) == [CAROL]
    assert await likes_count(db, first) == 1
    assert await like_rows(db, second) == []
    assert await likes_count(db, second) == 0
    feed = await client.get("/v1/feed", headers=auth_headers(CAROL))
    counts = {item["id"]: item["likes_count"] for item in feed.json()["items"]}
    assert counts == {str(first): 1, str(second): 0}


async def test_an_unlike_waiting_on_a_like_by_the_same_user_takes_that_like_back(
    app: FastAPI, db: asyncpg.Connection, db_url: str
) -> None:
    """The unlike starts while the like holds the image; when it gets the image, the like
    has committed, and the unlike must see and remove it (not answer "not liked" while the
    row stays)."""
    image = await insert_image(db, ALICE, visibility="public")
    await ensure_user(db, BOB)
    liker = await asyncpg.connect(db_url)
    try:
        like = liker.transaction()
        await like.start()
        await liker.execute(
            "SELECT 1 FROM generated_images WHERE id = $1 FOR UPDATE", image
        )  # as the like statement does, first
        await liker.execute(
            "INSERT INTO image_likes (image_id, user_id) VALUES ($1, $2)", image, BOB
        )
        await liker.execute(
            "UPDATE generated_images SET likes_count = likes_count + 1 WHERE id = $1", image
        )

        async def unlike() -> object:
            async with services_of(app).pool.acquire() as conn:
                return await gallery.like(conn, image, BOB, on=False)

        unliking = asyncio.create_task(unlike())
        await until_a_lock_wait(db, "the unlike to wait for the image", unliking)
        await like.commit()
        state = await asyncio.wait_for(unliking, 30)
    finally:
        await liker.close()

    assert state == LikeState(liked=False, likes_count=0)
    assert await like_rows(db, image) == []
    assert await likes_count(db, image) == 0


async def test_deleting_a_user_whose_unlike_is_in_flight_counts_that_like_once(
    client: httpx.AsyncClient, db: asyncpg.Connection, db_url: str, auth_headers: Headers
) -> None:
    """Bob's unlike has removed his like and lowered the count but not committed when Bob is
    deleted: the deletion waits for it and must not take the same like off again."""
    image = await insert_image(db, ALICE, visibility="public")
    for user in (BOB, CAROL):
        liked = await client.put(f"/v1/images/{image}/like", headers=auth_headers(user))
        assert liked.status_code == 200, liked.text
    unliker, deleter = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        unlike = unliker.transaction()
        await unlike.start()
        await unliker.execute("SELECT 1 FROM generated_images WHERE id = $1 FOR UPDATE", image)
        await unliker.execute(
            "DELETE FROM image_likes WHERE image_id = $1 AND user_id = $2", image, BOB
        )
        await unliker.execute(
            "UPDATE generated_images SET likes_count = likes_count - 1 WHERE id = $1", image
        )
        deleting = asyncio.create_task(deleter.execute("DELETE FROM users WHERE id = $1", BOB))
        await until_a_lock_wait(db, "the deletion to wait for the unlike", deleting)
        await unlike.commit()
        await asyncio.wait_for(deleting, 30)
    finally:
        await unliker.close()
        await deleter.close()

    assert await like_rows(db, image) == [CAROL]
    assert await likes_count(db, image) == 1


async def test_a_hundred_users_liking_and_unliking_at_once_keep_the_count_equal_to_the_rows(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    image = await insert_image(db, ALICE, visibility="public")
    users = [f"user_like_crowd_{n:03d}" for n in range(100)]
    headers = {user: auth_headers(user) for user in users}
    path = f"/v1/images/{image}/like"
    rng = random.Random(20261123)

    async def act(user: str, like: bool, times: int) -> None:
        # Each user sends its request `times` times at once: duplicates must count once.
        send = client.put if like else client.delete
        answers = await asyncio.gather(*(send(path, headers=headers[user]) for _ in range(times)))
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert answer.json()["liked"] is like
            assert 0 <= answer.json()["likes_count"] <= len(users)

    final: dict[str, bool] = {}
    for _ in range(4):
        plan = {user: rng.random() < 0.6 for user in users}
        await asyncio.gather(
            *(act(user, like, rng.choice((1, 1, 2))) for user, like in plan.items())
        )
        final = plan
        assert await likes_count(db, image) == len(await like_rows(db, image))

    expected = sorted(user for user, liked in final.items() if liked)
    assert await like_rows(db, image) == expected
    assert await likes_count(db, image) == len(expected)
    feed = await client.get("/v1/feed", headers=headers[users[0]])
    assert feed.json()["items"][0]["likes_count"] == len(expected)

    # The same race straight on the service, on the app's pool, many rounds over few users.
    pool = services_of(app).pool

    async def toggle(user: str, like: bool) -> None:
        async with pool.acquire() as conn:
            await gallery.like(conn, image, user, on=like)

    for user in users[:10]:
        await ensure_user(db, user)
    for _ in range(20):
        await asyncio.gather(*(toggle(u, rng.random() < 0.5) for u in users[:10] for _ in (0, 1)))
        assert await likes_count(db, image) == len(await like_rows(db, image))
