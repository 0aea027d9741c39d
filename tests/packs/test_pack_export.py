"""GET /v1/packs/{id}/export?format=zip: a pack's icons as PNGs at six sizes, an ICO each and a
manifest, streamed one icon at a time from the stored originals; the owner's packs, and
anyone's public ones (every icon public)."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from app.config import Settings
from app.main import create_app
from app.services import pack_export
from app.services.storage.base import Storage, StorageError
from tests.fakes.running import running
from tests.support.live import live_server
from tests.support.packs import ask_for_set, create_pack, finished_set, make_set
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
MakeSettings = Callable[..., Settings]
ALICE, BOB = "user_export_alice", "user_export_bob"
PNG_SIZES = [16, 32, 64, 128, 256, 512]
ICO_SIZES = {(16, 16), (32, 32), (48, 48), (64, 64)}
# Six subjects, two of them alike and one with no Latin letters: names stay unique and safe.
SIX = ["a rocket", "A Rocket!", "a ringed planet", "a comet", "火箭", "an astronaut"]
NAMES = ["a-rocket", "a-rocket-2", "a-ringed-planet", "a-comet", "icon-5", "an-astronaut"]


def unzip(response: httpx.Response) -> zipfile.ZipFile:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None  # every entry's CRC checks out
    return archive


def manifest_of(archive: zipfile.ZipFile) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(archive.read("manifest.json"))
    return found


def storage_of(app: FastAPI) -> Storage:
    storage: Storage = app.state.services.storage
    return storage


async def test_a_six_icon_set_is_charged_six_and_exports_every_size_an_ico_and_a_manifest(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    application = create_app(make_settings(new_user_credits=10))
    async with running(application) as client:
        pack_id = await create_pack(client, headers, name="Space Icons")
        made = await make_set(client, headers, pack_id, SIX)
        response = await client.get(f"/v1/packs/{pack_id}/export?format=zip", headers=headers)
        keys = {
            r["id"]: r["storage_key"]
            for r in await db.fetch(
                "SELECT id, storage_key FROM generated_images WHERE pack_id = $1",
                uuid.UUID(pack_id),
            )
        }
        originals = {str(i): await storage_of(application).get(k) for i, k in keys.items()}

    # charged: one debit per icon, nothing refunded
    ledger = await db.fetch(
        "SELECT reason, delta, job_id FROM credit_ledger WHERE user_id = $1 ORDER BY id", ALICE
    )
    assert [(r["reason"], r["delta"]) for r in ledger] == [("signup", 10)] + [("generate", -1)] * 6
    assert [str(r["job_id"]) for r in ledger[1:]] == [job["id"] for job in made["jobs"]]
    assert await db.fetchval("SELECT credits FROM users WHERE id = $1", ALICE) == 4
    # the jobs: one per prompt, in order, each filed into the pack
    assert [job["prompt"] for job in made["jobs"]] == SIX
    assert {str(i) for i in keys} == {job["image"]["id"] for job in made["jobs"]}
    archive = unzip(response)
    assert response.headers["content-disposition"] == 'attachment; filename="space-icons.zip"'
    expected = {"manifest.json"}
    for name in NAMES:
        expected |= {f"png/{size}/{name}.png" for size in PNG_SIZES} | {f"ico/{name}.ico"}
    assert set(archive.namelist()) == expected
    for name in NAMES:
        for size in PNG_SIZES:
            with Image.open(io.BytesIO(archive.read(f"png/{size}/{name}.png"))) as png:
                assert (png.format, png.size, png.mode) == ("PNG", (size, size), "RGBA")
        with Image.open(io.BytesIO(archive.read(f"ico/{name}.ico"))) as ico:
            assert ico.format == "ICO"
            assert set(ico.info["sizes"]) == ICO_SIZES
            for dims in ICO_SIZES:
                ico.size = dims  # type: ignore[misc]  # the ICO reader picks a frame by size
                ico.load()
                assert ico.size == dims
    manifest = manifest_of(archive)
    image_ids = [job["image"]["id"] for job in made["jobs"]]
    assert manifest["pack"] == {
        "id": pack_id,
        "name": "Space Icons",
        "style_prompt": "flat pastel icons, thick outlines",
    }
    assert (manifest["png_sizes"], manifest["ico_sizes"]) == (PNG_SIZES, [16, 32, 48, 64])
    assert manifest["skipped"] == []
    assert [(i["name"], i["prompt"], i["image_id"]) for i in manifest["icons"]] == list(
        zip(NAMES, SIX, image_ids, strict=True)
    )
    for icon in manifest["icons"]:
        assert icon["files"] == {
            **{str(size): f"png/{size}/{icon['name']}.png" for size in PNG_SIZES},
            "ico": f"ico/{icon['name']}.ico",
        }
        # the local provider draws 512 x 512: the largest PNG is the original's pixels
        assert icon["source"] == [512, 512]
        with (
            Image.open(io.BytesIO(originals[icon["image_id"]])) as original,
            Image.open(io.BytesIO(archive.read(icon["files"]["512"]))) as largest,
        ):
            assert largest.tobytes() == original.convert("RGBA").tobytes()


async def test_a_private_pack_is_404_to_others_and_a_public_one_is_theirs_to_export(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    async with running(create_app(make_settings(new_user_credits=10))) as client:
        assert (await client.get("/v1/me", headers=bob)).status_code == 200
        private = await create_pack(client, alice, name="Private")
        await make_set(client, alice, private, ["a key"])
        public = await create_pack(client, alice, name="Public")
        done = await make_set(client, alice, public, ["a sun", "a cloud"], visibility="public")
        empty = await create_pack(client, alice, name="Empty")

        private_by_bob = await client.get(f"/v1/packs/{private}/export", headers=bob)
        public_by_bob = await client.get(f"/v1/packs/{public}/export", headers=bob)
        empty_by_bob = await client.get(f"/v1/packs/{empty}/export", headers=bob)
        empty_by_alice = await client.get(f"/v1/packs/{empty}/export", headers=alice)
        anonymous = await client.get(f"/v1/packs/{public}/export")
        no_such = await client.get(f"/v1/packs/{uuid.uuid4()}/export", headers=alice)
        bad_format = await client.get(f"/v1/packs/{public}/export?format=tar", headers=alice)
        # one icon made private again: the pack is no longer public
        hidden = done["jobs"][0]["image"]["id"]
        patched = await client.patch(
            f"/v1/images/{hidden}", json={"visibility": "private"}, headers=alice
        )
        assert patched.status_code == 200, patched.text
        half_public_by_bob = await client.get(f"/v1/packs/{public}/export", headers=bob)

    for refused in (private_by_bob, empty_by_bob, no_such, half_public_by_bob):
        assert_problem(refused, 404)
    assert_problem(anonymous, 401)
    assert_problem(bad_format, 422)
    assert [i["prompt"] for i in manifest_of(unzip(public_by_bob))["icons"]] == [
        "a sun",
        "a cloud",
    ]
    only_manifest = unzip(empty_by_alice)
    assert only_manifest.namelist() == ["manifest.json"]
    assert manifest_of(only_manifest)["icons"] == []


async def test_icons_without_a_stored_original_are_left_out_and_listed_as_skipped(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    application = create_app(make_settings(new_user_credits=10))
    async with running(application) as client:
        pack_id = await create_pack(client, headers)
        made = await make_set(client, headers, pack_id, ["first", "gone", "kept"])
        gone = made["jobs"][1]["image"]["id"]
        key = await db.fetchval(
            "SELECT storage_key FROM generated_images WHERE id = $1", uuid.UUID(gone)
        )
        await storage_of(application).delete(key)
        linked = await db.fetchval(
            """
            INSERT INTO generated_images (user_id, image_url, prompt, pack_id)
            VALUES ($1, 'https://cdn.example.test/mobile.png', 'from the app', $2)
            RETURNING id
            """,
            ALICE,
            uuid.UUID(pack_id),
        )
        response = await client.get(f"/v1/packs/{pack_id}/export", headers=headers)

    manifest = manifest_of(unzip(response))
    assert [i["prompt"] for i in manifest["icons"]] == ["first", "kept"]
    assert [(s["image_id"], s["prompt"]) for s in manifest["skipped"]] == [
        (gone, "gone"),
        (str(linked), "from the app"),
    ]
    assert all(s["reason"] for s in manifest["skipped"])


class DownStore:
    """A store whose reads all fail, as an unreachable bucket's do."""

    name = "down"

    async def get(self, key: str) -> bytes:
        raise StorageError(f"could not read {key!r}: the store is down")


async def test_a_store_that_is_down_before_the_first_byte_is_a_503(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    application = create_app(make_settings(new_user_credits=10))
    async with running(application) as client:
        pack_id = await create_pack(client, headers)
        await make_set(client, headers, pack_id, ["an icon"])
        services = application.state.services
        real, services.storage = services.storage, DownStore()
        try:
            response = await client.get(f"/v1/packs/{pack_id}/export", headers=headers)
        finally:
            services.storage = real

    assert_problem(response, 503)


async def test_a_pack_over_the_export_limit_is_422(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    async with running(create_app(make_settings(pack_export_max_icons=2))) as client:
        pack_id = await create_pack(client, headers)
        await make_set(client, headers, pack_id, ["one", "two", "three"])
        response = await client.get(f"/v1/packs/{pack_id}/export", headers=headers)

    assert assert_problem(response, 422)["limit"] == 2


async def test_the_archive_is_written_and_sent_one_icon_at_a_time(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """Each icon's files leave as one chunk before the next original is read, and the last
    chunk holds the manifest and the central directory: never the whole archive at once."""
    headers = auth_headers(ALICE)
    application = create_app(make_settings(new_user_credits=10))
    async with running(application) as client:
        pack_id = await create_pack(client, headers)
        await make_set(client, headers, pack_id, ["one", "two", "three", "four"])
        services = application.state.services
        reads: list[str] = []
        real: Storage = services.storage

        class Counting:
            name = "counting"

            async def get(self, key: str) -> bytes:
                reads.append(key)
                return await real.get(key)

        export = await pack_export.open_export(
            services.pool,
            Counting(),  # type: ignore[arg-type]  # only get() is used
            services.decoders,
            services.settings,
            uuid.UUID(pack_id),
            ALICE,
        )
        chunks: list[bytes] = []
        reads_before_chunk: list[int] = []
        async for chunk in export.chunks:
            reads_before_chunk.append(len(reads))
            chunks.append(chunk)

    assert reads_before_chunk == [1, 2, 3, 4, 4]  # the first is read before streaming starts
    assert all(b"manifest.json" not in c for c in chunks[:-1])
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None
    assert len(archive.namelist()) == 4 * 7 + 1


async def test_the_export_streams_over_real_http(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """Under uvicorn the answer is chunked (no Content-Length: it is sent as it is built)."""
    headers = auth_headers(ALICE)
    async with live_server(create_app(make_settings(new_user_credits=10))) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            pack_id = await create_pack(client, headers)
            await make_set(client, headers, pack_id, ["one", "two"])
            async with client.stream(
                "GET", f"/v1/packs/{pack_id}/export", headers=headers
            ) as response:
                assert response.status_code == 200
                assert "content-length" not in response.headers
                assert response.headers["transfer-encoding"] == "chunked"
                body = b"".join([part async for part in response.aiter_raw()])

    assert len(zipfile.ZipFile(io.BytesIO(body)).namelist()) == 2 * 7 + 1


async def test_a_set_into_a_public_pack_keeps_it_exportable_only_when_public_too(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    async with running(create_app(make_settings(new_user_credits=10))) as client:
        assert (await client.get("/v1/me", headers=bob)).status_code == 200
        pack_id = await create_pack(client, alice)
        await make_set(client, alice, pack_id, ["a sun"], visibility="public")
        before = await client.get(f"/v1/packs/{pack_id}/export", headers=bob)
        answer = await ask_for_set(client, alice, pack_id, ["a moon"])  # private by default
        assert answer.status_code == 202, answer.text
        await finished_set(client, alice, answer.headers["location"])
        after = await client.get(f"/v1/packs/{pack_id}/export", headers=bob)

    assert before.status_code == 200
    assert_problem(after, 404)


async def test_the_web_app_may_read_the_archives_file_name_across_origins(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    origin = "https://app.atelier.test"
    headers = {**auth_headers(ALICE), "Origin": origin}
    async with running(create_app(make_settings(cors_origins=[origin]))) as client:
        pack_id = await create_pack(client, headers, name="Shared")
        response = await client.get(f"/v1/packs/{pack_id}/export", headers=headers)

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == origin
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert "content-disposition" in exposed
    assert response.headers["content-disposition"] == 'attachment; filename="shared.zip"'


async def test_a_store_that_fails_mid_export_cuts_the_archive_short(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """Once the first bytes are sent the status cannot change: the stream ends with the
    error, so the client sees a broken download, never a complete-looking partial archive."""
    headers = auth_headers(ALICE)
    application = create_app(make_settings(new_user_credits=10))
    async with running(application) as client:
        pack_id = await create_pack(client, headers)
        await make_set(client, headers, pack_id, ["one", "two", "three"])
        services = application.state.services
        real: Storage = services.storage
        reads = 0

        class FailsSecond:
            name = "fails-second"

            async def get(self, key: str) -> bytes:
                nonlocal reads
                reads += 1
                if reads == 2:
                    raise StorageError("the store went away")
                return await real.get(key)

        export = await pack_export.open_export(
            services.pool,
            FailsSecond(),  # type: ignore[arg-type]  # only get() is used
            services.decoders,
            services.settings,
            uuid.UUID(pack_id),
            ALICE,
        )
        chunks: list[bytes] = []
        with pytest.raises(StorageError):
            async for chunk in export.chunks:
                chunks.append(chunk)

    assert len(chunks) == 1  # the first icon went out; no manifest, no central directory
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
