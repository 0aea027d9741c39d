"""Generating into a pack, through the real worker and a loopback Gemini: the pack's style
prompt and its newest icons go to the provider as references, and the result is filed into
the pack; a pack deleted while its generation waits leaves the image outside any pack."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from PIL import Image

from app.config import Settings
from app.db import jobs as jobs_db
from app.db import pool as db_pool
from app.db import users as users_db
from app.main import create_app
from app.services.storage.base import Storage
from app.services.worker import Worker
from tests.fakes.gemini import API_KEY, FakeGemini, GeminiCall, InlineImage
from tests.fakes.running import running
from tests.support.polling import DEADLINE_SECONDS, wait_until

Headers = Callable[..., dict[str, str]]
ALICE = "user_alice"
STYLE = "flat pastel icons, thick outlines"


# -- helpers --------------------------------------------------------------------------------


@asynccontextmanager
async def gemini_app(
    make_settings: Callable[..., Settings], **changes: object
) -> AsyncIterator[tuple[FakeGemini, FastAPI, httpx.AsyncClient]]:
    """The app with PROVIDER=gemini pointed at a loopback Gemini, its in-process worker on."""
    with FakeGemini() as gemini:
        settings = make_settings(
            provider="gemini",
            gemini_base_url=gemini.url,
            gemini_api_key=API_KEY,
            new_user_credits=20,
            **changes,
        )
        application = create_app(settings)
        async with running(application) as client:
            yield gemini, application, client


def storage_of(app: FastAPI) -> Storage:
    storage: Storage = app.state.services.storage
    return storage


async def create_pack(
    client: httpx.AsyncClient, headers: dict[str, str], style_prompt: str | None = STYLE
) -> str:
    response = await client.post(
        "/v1/packs", json={"name": "Space", "style_prompt": style_prompt}, headers=headers
    )
    assert response.status_code == 201, response.text
    pack_id: str = response.json()["id"]
    return pack_id


async def generate(
    client: httpx.AsyncClient, headers: dict[str, str], prompt: str, **fields: Any
) -> dict[str, Any]:
    """A generation, waited for; it must complete."""
    response = await client.post(
        "/v1/generations",
        json={"prompt": prompt, **fields},
        headers={**headers, "Prefer": "wait=10"},
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["status"] == "completed", job
    return job


async def generate_icon(client: httpx.AsyncClient, headers: dict[str, str], prompt: str) -> str:
    job = await generate(client, headers, prompt)
    image_id: str = job["image"]["id"]
    return image_id


async def add_icon(
    client: httpx.AsyncClient, headers: dict[str, str], pack_id: str, image_id: str
) -> None:
    response = await client.post(
        f"/v1/packs/{pack_id}/icons", json={"image_id": image_id}, headers=headers
    )
    assert response.status_code == 204, response.text


async def get_pack(
    client: httpx.AsyncClient, headers: dict[str, str], pack_id: str
) -> dict[str, Any]:
    response = await client.get(f"/v1/packs/{pack_id}", headers=headers)
    assert response.status_code == 200, response.text
    pack: dict[str, Any] = response.json()
    return pack


async def stored_object(db: asyncpg.Connection, app: FastAPI, image_id: str) -> bytes:
    """The bytes stored for the image (what a provider must be shown as its reference)."""
    key = await db.fetchval(
        "SELECT storage_key FROM generated_images WHERE id = $1", uuid.UUID(image_id)
    )
    assert key is not None, f"image {image_id} has no stored object"
    return await storage_of(app).get(key)


async def pack_of(db: asyncpg.Connection, image_id: str) -> uuid.UUID | None:
    row = await db.fetchrow(
        "SELECT pack_id FROM generated_images WHERE id = $1", uuid.UUID(image_id)
    )
    assert row is not None, f"no image {image_id}"
    pack_id: uuid.UUID | None = row["pack_id"]
    return pack_id


async def until_ended(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: str
) -> dict[str, Any]:
    """Poll the job until it is completed or failed; returns it."""
    job: dict[str, Any] = {}

    async def ended() -> bool:
        job.update((await client.get(f"/v1/jobs/{job_id}", headers=headers)).json())
        return job["status"] in ("completed", "failed")

    await wait_until(ended, f"job {job_id} to end")
    return job


def last_call(gemini: FakeGemini) -> GeminiCall:
    calls = gemini.calls
    assert calls, "the provider was never called"
    return calls[-1]


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(out, format="PNG")
    return out.getvalue()


async def three_icons_in_a_pack(
    client: httpx.AsyncClient, headers: dict[str, str], pack_id: str
) -> list[str]:
    """Three generated icons filed into the pack, returned oldest first; they are filed in
    another order than they were made, so "newest" can only mean the images' own age."""
    icons = [await generate_icon(client, headers, f"icon number {n}") for n in (1, 2, 3)]
    for image_id in (icons[2], icons[0], icons[1]):
        await add_icon(client, headers, pack_id, image_id)
    return icons


# -- tests ----------------------------------------------------------------------------------


async def test_a_generation_into_a_pack_sends_its_style_and_newest_icons_and_files_the_result(
    make_settings: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    async with gemini_app(make_settings, pack_reference_icons=2) as (gemini, app, client):
        pack_id = await create_pack(client, headers)
        oldest, middle, newest = await three_icons_in_a_pack(client, headers, pack_id)
        objects = {i: await stored_object(db, app, i) for i in (oldest, middle, newest)}
        calls_before = len(gemini.calls)

        job = await generate(client, headers, "a rocket", pack_id=pack_id)

        calls = gemini.calls[calls_before:]
        pack = await get_pack(client, headers, pack_id)
        item = (await client.get(f"/v1/images/{job['image']['id']}", headers=headers)).json()

    assert len(set(objects.values())) == 3, "the icons must differ for this test to mean much"
    [call] = calls
    assert "a rocket" in call.prompt
    assert STYLE in call.prompt
    assert call.images == [
        InlineImage(objects[newest], "image/png"),
        InlineImage(objects[middle], "image/png"),
    ]
    new_image = job["image"]["id"]
    assert await pack_of(db, new_image) == uuid.UUID(pack_id)
    assert pack["icon_count"] == 4
    assert [icon["id"] for icon in pack["icons"]] == [new_image, newest, middle, oldest]
    # the gallery keeps what the user asked for, not the prompt the pack extended
    assert job["prompt"] == "a rocket"
    assert item["prompt"] == "a rocket"
    assert item["pack_id"] == pack_id
    assert await db.fetchval("SELECT credits FROM users WHERE id = $1", ALICE) == 20 - 4


async def test_an_explicit_reference_goes_first_then_the_pack_icons_without_duplicates(
    make_settings: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    async with gemini_app(make_settings, pack_reference_icons=2) as (gemini, app, client):
        pack_id = await create_pack(client, headers)
        oldest, middle, newest = await three_icons_in_a_pack(client, headers, pack_id)
        objects = {i: await stored_object(db, app, i) for i in (oldest, middle, newest)}

        # an icon of the pack that is not among its two newest: it, then the two newest
        styled = await generate(
            client,
            headers,
            "a rocket",
            kind="style",
            reference={"image_id": oldest},
            pack_id=pack_id,
        )
        with_old_icon = last_call(gemini)
        first_result = styled["image"]["id"]
        objects[first_result] = await stored_object(db, app, first_result)

        # the pack's newest icon as the reference: sent once, first
        await generate(
            client,
            headers,
            "a comet",
            kind="style",
            reference={"image_id": first_result},
            pack_id=pack_id,
        )
        with_newest_icon = last_call(gemini)

        # an upload: it, then the pack's two newest icons (the last result among them)
        uploaded = await client.post(
            "/v1/uploads",
            files={"file": ("moon.png", png((250, 240, 10)), "image/png")},
            headers=headers,
        )
        assert uploaded.status_code == 201, uploaded.text
        upload_key = uploaded.json()["upload_key"]
        upload_bytes = await storage_of(app).get(upload_key)
        icons_now = (await get_pack(client, headers, pack_id))["icons"]
        second_result = icons_now[0]["id"]
        objects[second_result] = await stored_object(db, app, second_result)
        await generate(
            client,
            headers,
            "a moon",
            kind="edit",
            reference={"upload_key": upload_key},
            pack_id=pack_id,
        )
        with_upload = last_call(gemini)

    assert with_old_icon.images == [
        InlineImage(objects[oldest], "image/png"),
        InlineImage(objects[newest], "image/png"),
        InlineImage(objects[middle], "image/png"),
    ]
    assert with_newest_icon.images == [
        InlineImage(objects[first_result], "image/png"),
        InlineImage(objects[newest], "image/png"),
    ]
    assert with_upload.images == [
        InlineImage(upload_bytes, "image/png"),
        InlineImage(objects[second_result], "image/png"),
        InlineImage(objects[first_result], "image/png"),
    ]
    for call in (with_old_icon, with_newest_icon, with_upload):
        assert STYLE in call.prompt


async def test_a_pack_without_usable_icons_sends_its_style_prompt_and_no_images(
    make_settings: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    async with gemini_app(make_settings, pack_reference_icons=2) as (gemini, _app, client):
        empty = await create_pack(client, headers)
        job = await generate(client, headers, "a rocket", pack_id=empty)
        into_empty = last_call(gemini)

        # an icon the mobile app saved (a URL, no stored object) cannot be shown to a provider
        plain = await create_pack(client, headers, style_prompt=None)
        await db.execute(
            """
            INSERT INTO generated_images (user_id, image_url, pack_id)
            VALUES ($1, 'https://cdn.example.test/mobile.png', $2)
            """,
            ALICE,
            uuid.UUID(plain),
        )
        await generate(client, headers, "a rocket", pack_id=plain)
        into_plain = last_call(gemini)
        plain_pack = await get_pack(client, headers, plain)

    assert "a rocket" in into_empty.prompt
    assert STYLE in into_empty.prompt
    assert into_empty.images == []
    assert await pack_of(db, job["image"]["id"]) == uuid.UUID(empty)
    assert into_plain.prompt == "a rocket"
    assert into_plain.images == []
    assert plain_pack["icon_count"] == 2


async def test_pack_reference_icons_0_sends_the_style_prompt_but_no_pack_images(
    make_settings: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    async with gemini_app(make_settings, pack_reference_icons=0) as (gemini, _app, client):
        pack_id = await create_pack(client, headers)
        await add_icon(client, headers, pack_id, await generate_icon(client, headers, "a star"))

        job = await generate(client, headers, "a rocket", pack_id=pack_id)
        call = last_call(gemini)
        pack = await get_pack(client, headers, pack_id)

    assert "a rocket" in call.prompt
    assert STYLE in call.prompt
    assert call.images == []
    assert pack["icon_count"] == 2
    assert pack["icons"][0]["id"] == job["image"]["id"]


async def test_a_pack_icon_deleted_while_its_generation_waits_is_left_out_not_fatal(
    make_settings: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """The icons only carry the pack's look: one deleted after the job was accepted is not
    sent, and the job still completes, charged once and not refunded. No worker runs while
    the job waits (a worker busy with another job's held answer could still, under load,
    take this one first), so the deletion surely comes before its attempt."""
    headers = auth_headers(ALICE)
    async with gemini_app(make_settings, pack_reference_icons=2, worker_in_process=False) as (
        gemini,
        app,
        client,
    ):
        services = app.state.services

        @asynccontextmanager
        async def worker_running() -> AsyncIterator[None]:
            worker = Worker(
                services.settings, services.pool, services.provider, services.storage, services.hub
            )
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            try:
                yield
            finally:
                stop.set()
                await asyncio.wait_for(task, DEADLINE_SECONDS)

        pack_id = await create_pack(client, headers)
        async with worker_running():
            _, middle, newest = await three_icons_in_a_pack(client, headers, pack_id)
        kept = await stored_object(db, app, middle)
        calls_before = len(gemini.calls)
        queued = await client.post(
            "/v1/generations", json={"prompt": "a rocket", "pack_id": pack_id}, headers=headers
        )
        assert queued.status_code == 202, queued.text  # its references: newest, middle
        deleted = await client.delete(f"/v1/images/{newest}", headers=headers)
        assert deleted.status_code == 204, deleted.text
        async with worker_running():
            job = await until_ended(client, headers, queued.json()["id"])
        calls = gemini.calls[calls_before:]

    assert job["status"] == "completed", job
    [call] = calls
    assert "a rocket" in call.prompt
    assert call.images == [InlineImage(kept, "image/png")]  # the deleted icon is left out
    assert await pack_of(db, job["image"]["id"]) == uuid.UUID(pack_id)
    ledger = await db.fetch(
        "SELECT reason, delta FROM credit_ledger WHERE job_id = $1", uuid.UUID(job["id"])
    )
    assert [(r["reason"], r["delta"]) for r in ledger] == [("generate", -1)]


async def test_a_pack_deleted_while_its_generation_waits_leaves_the_image_outside_any_pack(
    make_settings: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    settings = make_settings(worker_in_process=False)
    application = create_app(settings)
    async with running(application) as client:
        pack_id = await create_pack(client, headers)
        queued = await client.post(
            "/v1/generations", json={"prompt": "a rocket", "pack_id": pack_id}, headers=headers
        )
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]
        deleted = await client.delete(f"/v1/packs/{pack_id}", headers=headers)
        assert deleted.status_code == 204, deleted.text

        services = application.state.services
        worker = Worker(settings, services.pool, services.provider, services.storage, services.hub)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            job = await until_ended(client, headers, job_id)
        finally:
            stop.set()
            await asyncio.wait_for(task, DEADLINE_SECONDS)
        gallery = (await client.get("/v1/images", headers=headers)).json()["items"]

    assert job["status"] == "completed", job
    image_id = job["image"]["id"]
    assert await pack_of(db, image_id) is None
    assert [(item["id"], item["pack_id"]) for item in gallery] == [(image_id, None)]
    row = await db.fetchrow(
        "SELECT attempts, error_message FROM image_generation_jobs WHERE id = $1",
        uuid.UUID(job_id),
    )
    assert row is not None and dict(row) == {"attempts": 1, "error_message": None}
    ledger = await db.fetch(
        "SELECT reason, delta FROM credit_ledger WHERE job_id = $1", uuid.UUID(job_id)
    )
    assert [(r["reason"], r["delta"]) for r in ledger] == [("generate", -1)]


async def test_a_pack_deleted_just_as_the_image_is_recorded_leaves_it_outside_any_pack(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The pack's deletion is in flight (not yet committed) when the worker records the image:
    the record waits for it, then files the image outside any pack instead of failing."""
    recorder = await db_pool.connect(settings)
    deleter = await db_pool.connect(settings)
    try:
        await users_db.create_with_signup(recorder, ALICE, "alice@example.test", 5)
        pack_id = await recorder.fetchval(
            "INSERT INTO icon_packs (user_id, name) VALUES ($1, 'Space') RETURNING id", ALICE
        )
        job_id = uuid.uuid4()
        await jobs_db.create_with_debit(
            recorder,
            job_id=job_id,
            user_id=ALICE,
            kind="generate",
            prompt="a rocket",
            params={"pack_id": str(pack_id)},
            cost=1,
            model=None,
            input_image_key=None,
            idempotency_key=None,
            request_hash="h",
        )
        [claimed] = await jobs_db.claim(recorder, "test-worker", 1, 60)
        deleting = deleter.transaction()
        await deleting.start()
        await deleter.execute("DELETE FROM icon_packs WHERE id = $1", pack_id)

        image_id = uuid.uuid4()
        record = asyncio.create_task(
            jobs_db.complete(
                recorder,
                job_id,
                claimed["attempts"],
                image_id=image_id,
                image_url="http://127.0.0.1:8000/v1/images/x/download",
                storage_key=f"generations/{ALICE}/{job_id}.png",
                model="local-test",
                visibility="private",
                width=8,
                height=8,
                pack_id=pack_id,
            )
        )

        async def waiting() -> bool:  # on the deleting transaction's row lock
            event = await db.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1",
                recorder.get_server_pid(),
            )
            if event == "Lock":
                return True
            assert not record.done(), "the record did not wait for the deletion"
            return False

        await wait_until(waiting, "the record to wait on the deletion", interval=0.02)
        await deleting.commit()
        completed = await asyncio.wait_for(record, DEADLINE_SECONDS)
    finally:
        await deleter.close()  # first: an open deletion would hold the record up
        await recorder.close()

    assert completed
    row = await db.fetchrow("SELECT id, pack_id FROM generated_images WHERE job_id = $1", job_id)
    assert row is not None
    assert row["id"] == image_id
    assert row["pack_id"] is None
    assert await db.fetchval("SELECT count(*) FROM icon_packs") == 0
