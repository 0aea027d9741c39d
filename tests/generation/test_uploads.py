"""POST /v1/uploads (types judged by content, metadata stripped, bombs and oversize bodies
refused) and the source images a style or an edit may use."""

from __future__ import annotations

import functools
import io
import os
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo
from starlette.datastructures import FormData

from app.config import Settings
from app.main import create_app
from tests.fakes.gemini import API_KEY, FakeGemini, InlineImage
from tests.fakes.running import running
from tests.generation.conftest import (
    MakeApp,
    balance,
    decode,
    image_bytes,
    job_count,
    png_bomb,
    pulled_while_posting,
    storage_of,
    upload,
)
from tests.support.documented import assert_documented_headers
from tests.support.icc import SRGB_BLUE, SRGB_GREEN, SRGB_RED, rgb_profile
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
ALICE, BOB = "user_alice", "user_bob"
KIB, MIB = 1024, 1024 * 1024

png_bomb_20k = functools.cache(png_bomb)


def noise_png(width: int, height: int) -> bytes:
    """A PNG of random pixels: it does not compress, so its size is about width*height*3."""
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def rgb_at(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    r, g, b = image.convert("RGB").getpixel((x, y))  # type: ignore[misc]
    return r, g, b


def with_metadata(fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SpyCamMaker"  # Make
    exif[0x013B] = "Jane Roe"  # Artist
    image = Image.new("RGB", (40, 30), (10, 120, 200))
    out = io.BytesIO()
    extra: dict[str, Any] = {"exif": exif}
    if fmt == "PNG":
        info = PngInfo()
        info.add_text("Comment", "SpyCamMaker was here")
        extra["pnginfo"] = info
    image.save(out, fmt, **extra)
    return out.getvalue()


# -- types, by content ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime_type", "extension"),
    [("PNG", "image/png", "png"), ("JPEG", "image/jpeg", "jpg"), ("WEBP", "image/webp", "webp")],
)
async def test_an_upload_is_judged_by_its_content_not_its_name_or_content_type(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth_headers: Headers,
    fmt: str,
    mime_type: str,
    extension: str,
) -> None:
    response = await upload(
        client, auth_headers(ALICE), image_bytes(fmt, (48, 32)), "x.gif", "text/plain"
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["content_type"] == mime_type
    assert (body["width"], body["height"]) == (48, 32)
    key = body["upload_key"]
    assert key.startswith(f"uploads/{ALICE}/") and key.endswith(f".{extension}")
    stored = await storage_of(app).get(key)
    assert len(stored) == body["size"]
    assert decode(stored).format == fmt


async def test_a_jpeg_named_png_is_stored_as_a_jpeg(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    response = await upload(client, auth_headers(ALICE), image_bytes("JPEG"), "x.png", "image/png")

    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == "image/jpeg"
    assert response.json()["upload_key"].endswith(".jpg")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (image_bytes("GIF"), 415),
        (image_bytes("BMP"), 415),
        (b"hello, I am a text file\n", 415),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 422),  # the signature, then garbage
        (image_bytes("PNG")[:60], 422),  # truncated
        (b"", 422),
    ],
    ids=["gif", "bmp", "text", "svg", "png-signature-only", "truncated-png", "empty"],
)
async def test_anything_but_a_png_jpeg_or_webp_is_refused_whatever_it_claims(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, data: bytes, status: int
) -> None:
    """Another format is a 415 that lists the three; one of them that does not decode (or
    no bytes at all) is a 422."""
    response = await upload(client, auth_headers(ALICE), data, "x.png", "image/png")

    body = assert_problem(response, status)
    if status == 415:
        assert body["accepted"] == ["image/png", "image/jpeg", "image/webp"]
        assert "Accept" not in response.headers  # the request's own type, multipart, was right
    spec = (await client.get("/openapi.json")).json()
    assert_documented_headers(spec, "POST", "/v1/uploads", response)
    objects = app.state.settings.objects_dir / "uploads"
    assert not objects.exists() or not any(objects.rglob("*.*"))


async def test_an_upload_needs_a_file_and_a_user(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    unlabelled = await client.post("/v1/uploads", headers=auth_headers(ALICE))
    nothing = assert_problem(unlabelled, 415)
    assert unlabelled.headers["Accept"] == "multipart/form-data"
    spec = (await client.get("/openapi.json")).json()
    assert_documented_headers(spec, "POST", "/v1/uploads", unlabelled)
    assert nothing["detail"] == (
        "The body must be sent as Content-Type: multipart/form-data; this request has no "
        "Content-Type."
    )
    other_part = await client.post(
        "/v1/uploads", files={"image": ("a.png", image_bytes("PNG"))}, headers=auth_headers(ALICE)
    )
    assert assert_problem(other_part, 422)["errors"][0]["loc"] == ["body", "file"]
    assert_problem(
        await client.post("/v1/uploads", files={"file": ("a.png", image_bytes("PNG"))}), 401
    )


async def test_a_text_field_named_file_is_a_422_that_says_so(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    response = await client.post(
        "/v1/uploads", files={"file": (None, "not a file")}, headers=auth_headers(ALICE)
    )
    body = assert_problem(response, 422)
    assert body["detail"] == "file: must be a file part, not a text field"


async def test_the_route_closes_the_form_it_read_whatever_the_answer(
    client: httpx.AsyncClient, auth_headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body is read by the route itself now, so closing what it spooled (over 1 MiB is
    a temporary file) is the route's job too: once per request, stored or refused."""
    closed: list[bool] = []
    close = FormData.close

    async def counted_close(self: FormData) -> None:
        closed.append(True)
        await close(self)

    monkeypatch.setattr(FormData, "close", counted_close)
    headers = auth_headers(ALICE)
    assert (await upload(client, headers, image_bytes("PNG"))).status_code == 201
    assert len(closed) == 1
    assert_problem(await upload(client, headers, b"\x00" * (2 * MIB)), 415)  # not an image
    assert len(closed) == 2
    assert_problem(
        await client.post("/v1/uploads", files={"file": (None, "x")}, headers=headers), 422
    )
    assert len(closed) == 3


async def test_an_upload_from_a_stranger_is_401_before_its_body_is_read(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    """Its image is not received and spooled first: FastAPI reads a declared File before the
    route's dependencies, so the body is read in the route, once the token is checked."""
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        answer, pulled = await pulled_while_posting(client, headers, 8 * MIB, True)

        body = assert_problem(answer, 401)
        assert pulled < 256 * KIB, (headers, pulled, body)
    # The same upload with a valid token is read (and refused as no image at all).
    answer, pulled = await pulled_while_posting(client, auth_headers(ALICE), 8 * MIB, True)
    assert_problem(answer, 422)
    assert pulled > 8 * MIB


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
async def test_metadata_is_stripped_from_the_stored_copy(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, fmt: str
) -> None:
    original = with_metadata(fmt)
    assert dict(decode(original).getexif())[0x010F] == "SpyCamMaker"  # the test's premise

    response = await upload(
        client, auth_headers(ALICE), original, "photo.bin", "application/octet-stream"
    )

    assert response.status_code == 201, response.text
    stored = await storage_of(app).get(response.json()["upload_key"])
    image = decode(stored)
    assert image.format == fmt and image.size == (40, 30)
    assert dict(image.getexif()) == {}
    assert "exif" not in image.info and "Comment" not in image.info
    assert b"SpyCamMaker" not in stored and b"Jane Roe" not in stored


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
async def test_a_photo_is_stored_upright_as_its_camera_meant_it(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, fmt: str
) -> None:
    """A phone's portrait photo: landscape pixels and EXIF Orientation 6 (turn 90° clockwise
    to show). The tag goes with the rest of the metadata, so the pixels are turned first."""
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))  # left red, right blue: shown, top and bottom
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    out = io.BytesIO()
    image.save(out, fmt, exif=exif, quality=95)

    response = await upload(
        client, auth_headers(ALICE), out.getvalue(), "photo.bin", "application/octet-stream"
    )

    assert response.status_code == 201, response.text
    assert (response.json()["width"], response.json()["height"]) == (32, 64)
    stored = decode(await storage_of(app).get(response.json()["upload_key"]))
    assert stored.size == (32, 64) and dict(stored.getexif()) == {}
    top, bottom = rgb_at(stored, 16, 8), rgb_at(stored, 16, 56)
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0], (top, bottom)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
async def test_a_damaged_exif_block_is_ignored_not_a_500(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, fmt: str
) -> None:
    """EXIF that Pillow cannot parse (it raises on reading it, in a PNG or a WEBP): the
    image is stored as it is, without it, as before orientation was read."""
    out = io.BytesIO()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(out, fmt, exif=b"Exif\x00\x00XX\x00*garbage")

    response = await upload(
        client, auth_headers(ALICE), out.getvalue(), "photo.bin", "application/octet-stream"
    )

    assert response.status_code == 201, response.text
    assert (response.json()["width"], response.json()["height"]) == (20, 10)
    stored = await storage_of(app).get(response.json()["upload_key"])
    assert b"garbage" not in stored


async def test_colours_are_converted_to_srgb_before_the_profile_is_dropped(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    """A profile whose red primary is sRGB's green: its (200, 0, 0) is a green, wherever the
    profile is honoured. Stored without the profile, the pixels must say so in sRGB."""
    swapped = rgb_profile(SRGB_GREEN, SRGB_RED, SRGB_BLUE)
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 0, 0)).save(out, "JPEG", icc_profile=swapped, quality=95)

    response = await upload(client, auth_headers(ALICE), out.getvalue(), "photo.jpg", "image/jpeg")

    assert response.status_code == 201, response.text
    stored = decode(await storage_of(app).get(response.json()["upload_key"]))
    assert "icc_profile" not in stored.info
    red, green, _ = rgb_at(stored, 20, 15)
    assert green > 200 and red < 40, (red, green)


# -- bombs and sizes ------------------------------------------------------------------------


async def test_a_decompression_bomb_is_422(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    bomb = png_bomb_20k(20_000, 20_000)
    assert len(bomb) < 1 * MIB  # small on the wire: 400 million pixels once decoded

    response = await upload(client, auth_headers(ALICE), bomb)

    body = assert_problem(response, 422)
    assert "pixels" in body["detail"]
    objects = app.state.settings.objects_dir / "uploads"
    assert not objects.exists() or not any(objects.rglob("*.*"))


async def test_an_image_over_max_upload_pixels_is_422(
    make_app: MakeApp, auth_headers: Headers
) -> None:
    async with running(make_app(max_upload_pixels=1_000_000)) as client:
        over = await upload(client, auth_headers(ALICE), png_bomb(2000, 501))
        under = await upload(client, auth_headers(ALICE), png_bomb(2000, 500))

    body = assert_problem(over, 422)
    assert body["max_pixels"] == 1_000_000
    assert under.status_code == 201, under.text


async def test_an_upload_over_max_upload_bytes_is_413_before_it_is_all_read(
    make_app: MakeApp, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    async with running(make_app(max_upload_bytes=64 * KIB)) as client:
        declared, pulled_declared = await pulled_while_posting(client, headers, MIB, True)
        chunked, pulled_chunked = await pulled_while_posting(client, headers, 4 * MIB, False)

    # At most the limit plus the multipart allowance and a piece is read, of 1 and 4 MiB.
    # Each 413 names MAX_UPLOAD_BYTES, not the allowance the body may carry besides.
    for refused in (declared, chunked):
        body = assert_problem(refused, 413)
        assert body["detail"] == "Uploads may be at most 65536 bytes (64 KiB), MAX_UPLOAD_BYTES."
        assert body["limit"] == 64 * KIB
    assert pulled_declared < 256 * KIB
    assert pulled_chunked < 256 * KIB


async def test_an_upload_over_max_upload_bytes_within_the_framing_allowance_is_413(
    make_app: MakeApp, auth_headers: Headers
) -> None:
    data = noise_png(160, 160)
    assert 64 * KIB < len(data) < 100 * KIB
    async with running(make_app(max_upload_bytes=64 * KIB)) as client:
        response = await upload(client, auth_headers(ALICE), data)

    body = assert_problem(response, 413)
    assert body["type"].endswith("/payload-too-large")
    assert body["limit"] == 64 * KIB  # the upload's own limit, not the body limit
    assert body["detail"] == "Uploads may be at most 65536 bytes (64 KiB), MAX_UPLOAD_BYTES."


async def test_an_upload_larger_than_the_app_body_limit_is_accepted_up_to_its_own_limit(
    make_app: MakeApp, auth_headers: Headers
) -> None:
    data = noise_png(1024, 1024)
    assert 3 * MIB <= len(data) < 4 * MIB
    application = make_app(max_upload_bytes=10 * MIB, max_body_bytes=MIB)
    async with running(application) as client:
        accepted = await upload(client, auth_headers(ALICE), data)
        too_big_json = await client.post(
            "/v1/generations",
            json={"prompt": "x", "model": "m" * (2 * MIB)},
            headers=auth_headers(ALICE),
        )

    assert accepted.status_code == 201, accepted.text
    assert (accepted.json()["width"], accepted.json()["height"]) == (1024, 1024)
    assert_problem(too_big_json, 413)


# -- source images for style and edit -------------------------------------------------------


async def finished_image(
    client: httpx.AsyncClient, headers: dict[str, str], visibility: str
) -> str:
    response = await client.post(
        "/v1/generations",
        json={"prompt": f"a {visibility} cat", "visibility": visibility},
        headers={**headers, "Prefer": "wait=10"},
    )
    assert response.status_code == 200 and response.json()["status"] == "completed", response.text
    image_id: str = response.json()["image"]["id"]
    return image_id


async def test_someone_elses_upload_or_private_image_is_404_and_charges_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    bobs_upload = (await upload(client, bob, image_bytes("PNG"))).json()["upload_key"]
    bobs_private = await finished_image(client, bob, "private")
    file_name = bobs_upload.rsplit("/", 1)[1]
    await client.get("/v1/me", headers=alice)
    jobs_before = await job_count(db)

    references: list[dict[str, str]] = [
        {"upload_key": bobs_upload},
        {"upload_key": f"uploads/{ALICE}/../{BOB}/{file_name}"},
        {"upload_key": f"uploads/{ALICE}/{file_name}"},  # no such upload of Alice's
        {"image_id": bobs_private},
        {"image_id": str(uuid.uuid4())},
    ]
    for kind in ("style", "edit"):
        for reference in references:
            response = await client.post(
                "/v1/generations",
                json={"prompt": "borrowed", "kind": kind, "reference": reference},
                headers=alice,
            )
            assert response.status_code == 404, (kind, reference, response.text)
            assert_problem(response, 404)

    assert await job_count(db) == jobs_before
    assert await balance(db, ALICE) == 5


async def test_a_public_image_of_another_user_can_be_a_style_reference(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    public_id = await finished_image(client, auth_headers(BOB), "public")

    response = await client.post(
        "/v1/generations",
        json={"prompt": "in this style", "kind": "style", "reference": {"image_id": public_id}},
        headers={**auth_headers(ALICE), "Prefer": "wait=10"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    source_key = await db.fetchval(
        "SELECT storage_key FROM generated_images WHERE id = $1", uuid.UUID(public_id)
    )
    used = await db.fetchval(
        "SELECT input_image_key FROM image_generation_jobs WHERE id = $1",
        uuid.UUID(response.json()["id"]),
    )
    assert used == source_key
    assert await balance(db, ALICE) == 4


async def test_an_edit_of_ones_own_upload_sends_the_image_to_the_provider(
    make_settings: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    with FakeGemini() as gemini:
        settings = make_settings(
            provider="gemini", gemini_base_url=gemini.url, gemini_api_key=API_KEY
        )
        application = create_app(settings)
        async with running(application) as client:
            uploaded = await upload(client, headers, image_bytes("WEBP", (30, 20)), "a", "b/c")
            assert uploaded.status_code == 201, uploaded.text
            key = uploaded.json()["upload_key"]
            stored = await storage_of(application).get(key)
            response = await client.post(
                "/v1/generations",
                json={"prompt": "make it night", "kind": "edit", "reference": {"upload_key": key}},
                headers={**headers, "Prefer": "wait=10"},
            )
        calls = gemini.calls

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    [call] = calls
    assert "make it night" in call.prompt
    assert call.images == [InlineImage(stored, "image/webp")]
    row = await db.fetchrow("SELECT kind, input_image_key, cost FROM image_generation_jobs")
    assert row is not None and dict(row) == {"kind": "edit", "input_image_key": key, "cost": 1}
