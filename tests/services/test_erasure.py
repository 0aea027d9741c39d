"""Erasure (Clerk's user.deleted, DELETE /v1/me): everything the user owns goes, rows and
stored objects; the likes they gave come off others' counts; the ledger keeps its rows with
no personal data and still adds up; the id answers 401 from then on, caches warm or not;
a second erasure changes nothing; and an erasure racing the user's own requests neither
brings the account back nor leaves anything behind."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.db import users as users_db
from app.main import create_app
from app.services import accounts, credits
from app.services.realtime import FEED_CHANNEL
from app.services.storage.base import Storage, StorageError, generation_prefix, upload_prefix
from app.services.storage.r2 import R2Storage
from tests.e2e.test_check_ledger_cli import check_ledger
from tests.fakes.running import running
from tests.fakes.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, FakeS3
from tests.gallery.conftest import insert_image, insert_mobile_image, png_bytes, store_object
from tests.support.locks import until_a_lock_wait
from tests.support.polling import wait_until
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
GONE, BOB = "user_er_gone", "user_er_bob"
OWNED_TABLES = (
    "generated_images",
    "image_generation_jobs",
    "custom_prompts",
    "icon_packs",
    "subscriptions",
    "image_likes",
)


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    """The app without an in-process worker: the jobs made here stay as they were made."""
    application = create_app(make_settings(worker_in_process=False))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://atelier.test") as c:
        yield c


def svc(app: FastAPI) -> Any:
    return app.state.services


async def erase(app: FastAPI, user_id: str, storage: Storage | None = None) -> accounts.Erasure:
    s = svc(app)
    return await accounts.erase(s.pool, storage or s.storage, s.users, user_id, s.stripe)


async def upload(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post(
        "/v1/uploads", files={"file": ("a.png", png_bytes(), "image/png")}, headers=headers
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["upload_key"]
    return key


async def owned_counts(db: asyncpg.Connection, user_id: str) -> dict[str, int]:
    return {
        table: int(await db.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", user_id))
        for table in OWNED_TABLES
    }


async def likes_count(db: asyncpg.Connection, image_id: uuid.UUID) -> int:
    return int(
        await db.fetchval("SELECT likes_count FROM generated_images WHERE id = $1", image_id)
    )


async def build_world(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> dict[str, Any]:
    """GONE with everything a user can have, BOB with a little; keys and ids to check."""
    storage = svc(app).storage
    gone, bob = auth_headers(GONE, "gone@example.test"), auth_headers(BOB)
    assert (await client.get("/v1/me", headers=gone)).status_code == 200  # signup: 5
    assert (await client.get("/v1/me", headers=bob)).status_code == 200
    await credits.grant(db, GONE, 10, "purchase", "cs_erasure_1")
    public = await insert_image(db, GONE, visibility="public", prompt="my face")
    private = await insert_image(db, GONE, prompt="my house")
    mobile = await insert_mobile_image(db, GONE, "https://cdn.example.test/mine.png")
    gone_keys = [
        await db.fetchval("SELECT storage_key FROM generated_images WHERE id = $1", i)
        for i in (public, private)
    ]
    for key in gone_keys:
        await store_object(storage, key)
    gone_upload = await upload(client, gone)
    bob_image = await insert_image(db, BOB, visibility="public", prompt="bob's boat")
    bob_key = await db.fetchval("SELECT storage_key FROM generated_images WHERE id = $1", bob_image)
    await store_object(storage, bob_key)
    bob_upload = await upload(client, bob)

    job = await client.post("/v1/generations", json={"prompt": "my cat"}, headers=gone)
    assert job.status_code == 202, job.text
    prompt = await client.post("/v1/prompts", json={"prompt_text": "my style"}, headers=gone)
    assert prompt.status_code == 201, prompt.text
    pack = await client.post("/v1/packs", json={"name": "my pack"}, headers=gone)
    assert pack.status_code == 201, pack.text
    await db.execute(
        "INSERT INTO subscriptions (user_id, status, stripe_customer_id)"
        " VALUES ($1, 'Pro', 'cus_1')",
        GONE,
    )
    for image_id in (bob_image, public):  # GONE likes BOB's image and its own
        assert (await client.put(f"/v1/images/{image_id}/like", headers=gone)).status_code == 200
    assert (await client.put(f"/v1/images/{public}/like", headers=bob)).status_code == 200
    assert await likes_count(db, bob_image) == 1
    return {
        "gone_keys": gone_keys,
        "gone_upload": gone_upload,
        "public": public,
        "mobile": mobile,
        "bob_image": bob_image,
        "bob_keys": [bob_key, bob_upload],
    }


async def test_erasure_removes_everything_the_user_owns_and_keeps_an_anonymous_ledger(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    db_url: str,
    auth_headers: Headers,
    tmp_path: Path,
) -> None:
    world = await build_world(app, client, db, auth_headers)
    storage = svc(app).storage
    assert all(v > 0 for v in (await owned_counts(db, GONE)).values())
    ledger_before = await db.fetchval("SELECT count(*) FROM credit_ledger WHERE user_id = $1", GONE)

    async with svc(app).hub.subscribe(FEED_CHANNEL) as feed:
        result = await erase(app, GONE)
        removed = None
        deadline = time.monotonic() + 10
        while removed is None and time.monotonic() < deadline:
            event = await feed.get(1)
            if event is not None and event.get("type") == "removed":
                removed = event["id"]
    assert removed == str(world["public"])  # the public image left open feeds

    assert result.erased_now and result.objects_left == []
    assert (result.images, result.likes_given, result.jobs, result.forfeited) == (3, 2, 1, 14)
    assert await owned_counts(db, GONE) == dict.fromkeys(OWNED_TABLES, 0)
    # BOB's like count dropped with GONE's like; BOB's own things are untouched
    assert await likes_count(db, world["bob_image"]) == 0
    for key in world["gone_keys"] + [world["gone_upload"]]:
        assert not await storage.exists(key), key
    for key in world["bob_keys"]:
        assert await storage.exists(key), key
    assert (await owned_counts(db, BOB))["generated_images"] == 1

    user = await db.fetchrow("SELECT * FROM users WHERE id = $1", GONE)
    assert user["erased_at"] is not None and user["credits"] == 0
    assert user["email"] == accounts.erased_email(GONE) and user["last_login_at"] is None
    rows = await db.fetch(
        "SELECT reason, delta, note, source_id FROM credit_ledger WHERE user_id = $1 ORDER BY id",
        GONE,
    )
    assert len(rows) == ledger_before + 1
    assert [(r["reason"], r["delta"]) for r in rows] == [
        ("signup", 5),
        ("purchase", 10),
        ("generate", -1),
        ("admin", -14),
    ]
    assert rows[-1]["source_id"] == accounts.forfeit_source(GONE)
    assert "gone@example.test" not in repr([dict(r) for r in rows])
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = 'gone@example.test'") == 0

    bad, unopened = await credits.check(db)
    assert bad == [] and unopened == 0
    code, out, err = await check_ledger(db_url, tmp_path)
    assert code == 0, out + err
    assert "no ledger entry" not in out


async def test_a_second_erasure_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    await build_world(app, client, db, auth_headers)
    await erase(app, GONE)
    before = await db.fetchrow("SELECT * FROM users WHERE id = $1", GONE)
    ledger = await db.fetch("SELECT * FROM credit_ledger ORDER BY id")

    again = await erase(app, GONE)

    assert not again.erased_now and again.objects_left == []
    assert (again.images, again.forfeited) == (0, 0)
    assert dict(await db.fetchrow("SELECT * FROM users WHERE id = $1", GONE)) == dict(before)
    assert await db.fetch("SELECT * FROM credit_ledger ORDER BY id") == ledger


async def test_a_still_valid_token_is_refused_after_erasure_with_warm_caches(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(GONE)
    for _ in range(2):  # the token's verification and the user are now cached
        assert (await client.get("/v1/me", headers=headers)).status_code == 200

    await erase(app, GONE)

    for method, path, body in (
        ("GET", "/v1/me", None),
        ("GET", "/v1/images", None),
        ("POST", "/v1/generations", {"prompt": "again"}),
        ("POST", "/v1/prompts", {"prompt_text": "again"}),
        ("DELETE", "/v1/me", None),
    ):
        response = await client.request(method, path, json=body, headers=headers)
        assert_problem(response, 401)
    # never a fresh account with new free credits
    reasons = await db.fetch(
        "SELECT reason FROM credit_ledger WHERE user_id = $1 ORDER BY id", GONE
    )
    assert [r["reason"] for r in reasons] == ["signup", "admin"]  # the signup, its forfeiture
    assert await db.fetchval("SELECT credits FROM users WHERE id = $1", GONE) == 0


async def test_another_process_with_the_user_cached_cannot_write_for_it(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_settings: Callable[..., Settings],
    db: asyncpg.Connection,
    auth_headers: Headers,
) -> None:
    """A second instance remembers the user for a few seconds; whatever it tries to write
    for the erased id in that time is refused by the database (401), and reads find nothing."""
    other = create_app(make_settings(worker_in_process=False))
    headers = auth_headers(GONE)
    async with (
        other.router.lifespan_context(other),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=other), base_url="http://other.test"
        ) as second,
    ):
        assert (await second.get("/v1/me", headers=headers)).status_code == 200
        await erase(app, GONE)
        prompt = await second.post("/v1/prompts", json={"prompt_text": "x"}, headers=headers)
        assert_problem(prompt, 401)
        pack = await second.post("/v1/packs", json={"name": "x"}, headers=headers)
        assert_problem(pack, 401)
        images = await second.get("/v1/images", headers=headers)
        assert images.status_code in (200, 401)
        if images.status_code == 200:
            assert images.json()["items"] == []
    assert await owned_counts(db, GONE) == dict.fromkeys(OWNED_TABLES, 0)


async def test_an_id_never_seen_is_remembered_and_its_first_request_refused(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    result = await erase(app, "user_er_never")
    assert result.erased_now
    response = await client.get("/v1/me", headers=auth_headers("user_er_never"))
    assert_problem(response, 401)
    assert await db.fetchval("SELECT count(*) FROM credit_ledger") == 0
    assert (
        await accounts.ensure_user(svc(app).pool, svc(app).users, "user_er_never", "n@x.test")
        is None
    )
    bad, unopened = await credits.check(db)
    assert bad == [] and unopened == 0


async def test_delete_me_erases_the_callers_own_account(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    world = await build_world(app, client, db, auth_headers)
    response = await client.delete("/v1/me", headers=auth_headers(GONE))
    assert response.status_code == 204, response.text
    assert await owned_counts(db, GONE) == dict.fromkeys(OWNED_TABLES, 0)
    assert await likes_count(db, world["bob_image"]) == 0
    assert_problem(await client.get("/v1/me", headers=auth_headers(GONE)), 401)
    assert (await client.get("/v1/me", headers=auth_headers(BOB))).status_code == 200


# -- races --------------------------------------------------------------------------------


def pause_after(monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Make app.db.users.<name> stop, inside the erasure's transaction, until released."""
    reached, release = asyncio.Event(), asyncio.Event()
    original = getattr(users_db, name)

    async def paused(*args: Any) -> Any:
        result = await original(*args)
        reached.set()
        await release.wait()
        return result

    monkeypatch.setattr(users_db, name, paused)  # the module accounts calls through
    return reached, release


async def test_a_first_request_racing_the_erasure_does_not_bring_the_account_back(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reached, release = pause_after(monkeypatch, "insert_tombstone")
    erasing = asyncio.create_task(erase(app, GONE))
    await reached.wait()  # the tombstone is written, not yet committed
    first = asyncio.create_task(client.get("/v1/me", headers=auth_headers(GONE)))
    await until_a_lock_wait(
        db, "a wait for the erasure's lock"
    )  # the first request's INSERT waits for the tombstone
    release.set()
    await erasing
    assert_problem(await first, 401)
    user = await db.fetchrow("SELECT * FROM users WHERE id = $1", GONE)
    assert user["erased_at"] is not None and user["credits"] == 0
    assert await db.fetchval("SELECT count(*) FROM credit_ledger WHERE user_id = $1", GONE) == 0


async def test_a_generation_racing_the_erasure_leaves_no_job_and_no_debit(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = auth_headers(GONE)
    assert (await client.get("/v1/me", headers=headers)).status_code == 200
    reached, release = pause_after(monkeypatch, "lock")
    erasing = asyncio.create_task(erase(app, GONE))
    await reached.wait()  # the users row is locked; nothing deleted yet
    submitted = asyncio.create_task(
        client.post("/v1/generations", json={"prompt": "quick"}, headers=headers)
    )
    liked = asyncio.create_task(
        client.post("/v1/prompts", json={"prompt_text": "p"}, headers=headers)
    )
    await until_a_lock_wait(db, "a wait for the erasure's lock")
    release.set()
    await erasing
    response, prompt = await submitted, await liked
    assert response.status_code in (401, 404), response.text
    assert prompt.status_code == 401, prompt.text
    assert await owned_counts(db, GONE) == dict.fromkeys(OWNED_TABLES, 0)
    rows = await db.fetch(
        "SELECT reason, delta FROM credit_ledger WHERE user_id = $1 ORDER BY id", GONE
    )
    assert [(r["reason"], r["delta"]) for r in rows] == [("signup", 5), ("admin", -5)]
    bad, _ = await credits.check(db)
    assert bad == []


async def test_a_generation_committed_before_the_erasure_is_erased_with_it(
    app: FastAPI, client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(GONE)
    results = await asyncio.gather(
        *(
            client.post("/v1/generations", json={"prompt": f"p{i}"}, headers=headers)
            for i in range(3)
        ),
        erase(app, GONE),
        return_exceptions=True,
    )
    assert not any(isinstance(r, BaseException) for r in results), results
    assert await owned_counts(db, GONE) == dict.fromkeys(OWNED_TABLES, 0)
    assert await db.fetchval("SELECT erased_at FROM users WHERE id = $1", GONE) is not None
    bad, unopened = await credits.check(db)
    assert bad == [] and unopened == 0


# -- R2 -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[FakeS3]:
    with FakeS3() as server:
        yield server


async def test_erasure_deletes_the_users_objects_on_r2(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    auth_headers: Headers,
    s3: FakeS3,
) -> None:
    bucket = s3.create_bucket()
    r2 = R2Storage(
        endpoint=s3.endpoint,
        bucket=bucket,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        timeout_seconds=5.0,
    )
    try:
        assert (await client.get("/v1/me", headers=auth_headers(GONE))).status_code == 200
        mine = [
            await db.fetchval(
                "SELECT storage_key FROM generated_images WHERE id = $1",
                await insert_image(db, GONE, visibility=v),
            )
            for v in ("public", "private")
        ]
        mine += [f"{upload_prefix(GONE)}{i}.png" for i in range(3)]
        # an image key outside the user's folders (as newer keys may be) goes by its row
        outside = uuid.uuid4()
        await db.execute(
            "INSERT INTO generated_images (id, user_id, image_url, storage_key)"
            " VALUES ($1, $2, 'x', $3)",
            outside,
            GONE,
            f"generations/{outside}.png",
        )
        mine.append(f"generations/{outside}.png")
        bob_image = await insert_image(db, BOB, visibility="public")
        theirs = [
            await db.fetchval("SELECT storage_key FROM generated_images WHERE id = $1", bob_image),
            f"{upload_prefix(BOB)}0.png",
        ]
        for key in mine + theirs:
            await r2.put(key, png_bytes(), "image/png")

        result = await erase(app, GONE, storage=r2)

        assert result.objects_left == [] and result.objects_removed == len(mine)
        assert sorted(s3.keys(bucket)) == sorted(theirs)
    finally:
        await r2.aclose()


async def test_a_storage_outage_leaves_the_database_erased_and_a_retry_finishes(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    auth_headers: Headers,
    s3: FakeS3,
) -> None:
    assert (await client.get("/v1/me", headers=auth_headers(GONE))).status_code == 200
    key = f"{upload_prefix(GONE)}left.png"
    down = R2Storage(
        endpoint="http://127.0.0.1:9",
        bucket="gone",
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        timeout_seconds=1.0,
    )
    bucket = s3.create_bucket()
    up = R2Storage(
        endpoint=s3.endpoint,
        bucket=bucket,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        timeout_seconds=5.0,
    )
    try:
        await up.put(key, png_bytes(), "image/png")
        first = await erase(app, GONE, storage=down)
        assert first.erased_now
        assert first.objects_left == [upload_prefix(GONE), generation_prefix(GONE)]
        assert await db.fetchval("SELECT erased_at FROM users WHERE id = $1", GONE) is not None
        assert_problem(await client.get("/v1/me", headers=auth_headers(GONE)), 401)

        retry = await erase(app, GONE, storage=up)  # what a redelivered webhook does
        assert not retry.erased_now and retry.objects_left == []
        assert s3.keys(bucket) == []
    finally:
        await down.aclose()
        await up.aclose()


async def test_a_result_stored_after_the_erasure_swept_is_removed_by_the_worker(
    make_settings: Callable[..., Settings],
    db: asyncpg.Connection,
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worst moment: the user is erased (job row deleted, folders swept) while the
    worker is storing the job's result. The worker finds its job gone and removes the
    object, so nothing is left behind."""
    application = create_app(make_settings(worker_in_process=True, worker_poll_seconds=0.1))
    async with running(application) as client:
        storage = svc(application).storage
        real_put = storage.put
        stored: list[str] = []

        async def put_after_erasure(key: str, data: bytes, content_type: str) -> None:
            if key.startswith("generations/"):
                await erase(application, GONE)  # erased just before the object lands
            await real_put(key, data, content_type)
            stored.append(key)

        monkeypatch.setattr(storage, "put", put_after_erasure)
        job = await client.post(
            "/v1/generations", json={"prompt": "last wish"}, headers=auth_headers(GONE)
        )
        assert job.status_code == 202, job.text

        async def cleaned() -> bool:
            return bool(stored) and not await storage.exists(stored[0])

        await wait_until(cleaned, "the worker to remove the orphaned result")
    assert await owned_counts(db, GONE) == dict.fromkeys(OWNED_TABLES, 0)
    bad, unopened = await credits.check(db)
    assert bad == [] and unopened == 0


async def test_an_earlier_attempts_result_goes_too_when_the_erasure_comes_mid_retry(
    make_settings: Callable[..., Settings],
    db: asyncpg.Connection,
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attempt 1's put lands but the store's answer is lost (a StorageError, so the job is
    retried); the user is erased while attempt 2 stores. Attempt 2's completion is refused
    and it removes its own object: attempt 1's, which no row ever pointed at and which the
    erasure's sweep of the user's folders cannot find (no user id in the key), must go too."""
    application = create_app(
        make_settings(
            worker_in_process=True,
            worker_poll_seconds=0.1,
            storage_retries=0,
            retry_base_seconds=0.0,
        )
    )
    async with running(application) as client:
        storage = svc(application).storage
        real_put = storage.put
        stored: list[str] = []

        async def put(key: str, data: bytes, content_type: str) -> None:
            if not key.startswith("generations/"):
                await real_put(key, data, content_type)
                return
            if stored:
                await erase(application, GONE)  # erased while attempt 2 stores
            await real_put(key, data, content_type)
            stored.append(key)
            if len(stored) == 1:
                raise StorageError("the answer to a put that landed was lost")

        monkeypatch.setattr(storage, "put", put)
        job = await client.post(
            "/v1/generations", json={"prompt": "stored twice"}, headers=auth_headers(GONE)
        )
        assert job.status_code == 202, job.text

        async def attempt_two_cleaned() -> bool:
            return len(stored) == 2 and not await storage.exists(stored[1])

        await wait_until(attempt_two_cleaned, "attempt 2 to remove what it stored")
        assert not await storage.exists(stored[0]), f"{stored[0]} of the erased user remains"
    assert await owned_counts(db, GONE) == dict.fromkeys(OWNED_TABLES, 0)


async def test_an_earlier_attempts_result_goes_when_the_erasure_comes_while_the_job_waits(
    make_settings: Callable[..., Settings],
    db: asyncpg.Connection,
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attempt 1's put lands but the store's answer is lost, and the job waits for its retry
    when the user is erased: no attempt will ever run again to remove that object, so the
    erasure does (its key has no user id for the sweep of the user's folders to find)."""
    application = create_app(
        make_settings(
            worker_in_process=True,
            worker_poll_seconds=0.1,
            storage_retries=0,
            retry_base_seconds=600.0,
        )
    )
    async with running(application) as client:
        storage = svc(application).storage
        real_put = storage.put
        stored: list[str] = []

        async def put(key: str, data: bytes, content_type: str) -> None:
            await real_put(key, data, content_type)
            if key.startswith("generations/"):
                stored.append(key)
                raise StorageError("the answer to a put that landed was lost")

        monkeypatch.setattr(storage, "put", put)
        job = await client.post(
            "/v1/generations", json={"prompt": "stored, then erased"}, headers=auth_headers(GONE)
        )
        assert job.status_code == 202, job.text

        async def waiting_for_retry() -> bool:
            status = await db.fetchval(
                "SELECT status FROM image_generation_jobs WHERE id = $1",
                uuid.UUID(job.json()["id"]),
            )
            return bool(stored) and status == "pending"

        await wait_until(waiting_for_retry, "attempt 1 to fail after its put landed")
        assert await storage.exists(stored[0])
        await erase(application, GONE)
        assert not await storage.exists(stored[0]), f"{stored[0]} of the erased user remains"
    assert await owned_counts(db, GONE) == dict.fromkeys(OWNED_TABLES, 0)


async def test_a_balance_the_mobile_app_left_below_zero_does_not_block_erasure(
    app: FastAPI, db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    # As on a live database from before the service: the check exists but is NOT VALID.
    await db.execute("ALTER TABLE users DROP CONSTRAINT users_credits_nonnegative")
    await db.execute("INSERT INTO users (id, email, credits) VALUES ($1, 'neg@x.test', -3)", GONE)
    await db.execute(
        "ALTER TABLE users ADD CONSTRAINT users_credits_nonnegative CHECK (credits >= 0) NOT VALID"
    )
    result = await erase(app, GONE)
    assert result.erased_now and result.forfeited == 0
    user = await db.fetchrow("SELECT credits, erased_at, email FROM users WHERE id = $1", GONE)
    assert user["credits"] == 0 and user["erased_at"] is not None
    assert user["email"] == accounts.erased_email(GONE)
    code, out, err = await check_ledger(db_url, tmp_path)
    assert code == 0, out + err


async def test_erasing_a_user_the_service_never_saw_leaves_a_ledger_that_adds_up(
    app: FastAPI, db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    # A mobile-app user who never called the API (no ledger row yet), deleted in Clerk: the
    # forfeiture of their 5 credits must not be the ledger's only row (a sum of -5 for a 0).
    await db.execute("INSERT INTO users (id, email, credits) VALUES ($1, 'm@x.test', 5)", GONE)
    result = await erase(app, GONE)
    assert result.erased_now and result.forfeited == 5
    rows = await db.fetch(
        "SELECT reason, delta, balance_after FROM credit_ledger WHERE user_id = $1 ORDER BY id",
        GONE,
    )
    assert [tuple(r) for r in rows] == [("opening_balance", 5, 5), ("admin", -5, 0)]
    bad, _ = await credits.check(db)
    assert [dict(r) for r in bad] == []
    code, out, err = await check_ledger(db_url, tmp_path)
    assert code == 0, out + err
