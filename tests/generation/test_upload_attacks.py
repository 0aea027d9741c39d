"""Hostile uploads: bombs refused from the header before any decoding, polyglots stored as
the bare image only, wrong content types, a 40 MB body refused without being read, and a
burst of the largest accepted images leaving the rest of the API answering."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from app.services.imaging import Decoders
from tests.generation.conftest import (
    decode,
    image_bytes,
    png_bomb,
    pulled_while_posting,
    storage_of,
    upload,
)
from tests.support.polling import wait_until
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
USER = "user_upload_attacker"
MIB = 1024 * 1024


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


@functools.cache
def blank_rgba_png(width: int, height: int) -> bytes:
    """A transparent RGBA PNG: tiny on the wire (6300x6300 is ~154 KB), 4 bytes a pixel
    decoded (6300x6300: ~150 MB)."""
    out = io.BytesIO()
    Image.new("RGBA", (width, height)).save(out, "PNG")
    return out.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header says width x height and whose pixel data is garbage: decoding it
    would fail as damaged, so a "too large" answer proves it was judged by the header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"not zlib at all")
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare width x height."""
    data = bytearray(image_bytes("JPEG", (16, 16)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_declaring(side: int) -> bytes:
    """A lossy WEBP whose VP8 frame header is patched to declare side x side."""
    data = bytearray(image_bytes("WEBP", (16, 16)))
    start = data.index(b"\x9d\x01\x2a") + 3  # the VP8 key frame start code, then the sizes
    struct.pack_into("<HH", data, start, side & 0x3FFF, side & 0x3FFF)
    return bytes(data)


def png_with_text_chunk(text: bytes) -> bytes:
    data = image_bytes("PNG")
    end = data.rindex(b"\x00\x00\x00\x00IEND")
    return data[:end] + _png_chunk(b"tEXt", b"Comment\x00" + text) + data[end:]


def jpeg_with_comment(text: bytes) -> bytes:
    data = image_bytes("JPEG")
    segment = b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text
    return data[:2] + segment + data[2:]


ZIP = (
    b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00"
    b"\x05\x00\x00\x00\x08\x00\x00\x00evil.jsphello"
)
HTML = b"<html><script>alert(document.cookie)</script></html>"
GIF_JS = b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00;*/=alert(1);//" + b"\x00" * 20
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@dataclass(frozen=True)
class Attack:
    data: Callable[[], bytes]
    status: int
    detail: str | None = None  # a word the problem's detail must hold
    absent: bytes | None = None  # what must not survive in the stored copy (201 only)
    content_type: str = "image/png"


ATTACKS: dict[str, Attack] = {
    # bombs and sizes, judged from the header before decoding
    "png-6300x6300-rgba": Attack(lambda: blank_rgba_png(6300, 6300), 422, "on a side"),
    "png-header-says-6300": Attack(lambda: header_only_png(6300, 6300), 422, "on a side"),
    "png-header-says-65535": Attack(lambda: header_only_png(65_535, 65_535), 422, "too large"),
    "png-tall-1x5000": Attack(lambda: blank_rgba_png(1, 5000), 422, "on a side"),
    "png-wide-5000x1": Attack(lambda: blank_rgba_png(5000, 1), 422, "on a side"),
    "png-bomb-1bit-20000": Attack(lambda: png_bomb(20_000, 20_000), 422, "pixels"),
    "jpeg-header-says-60000": Attack(lambda: jpeg_declaring(60_000, 60_000), 422),
    "webp-header-says-16383": Attack(lambda: webp_declaring(16_383), 422),
    # polyglots: accepted as the image they start with, stored without the rest; a file
    # that starts as no PNG, JPEG or WEBP is a 415, one that only starts as one a 422
    "png+zip": Attack(lambda: image_bytes("PNG") + ZIP, 201, absent=b"PK\x03\x04"),
    "png+html": Attack(lambda: image_bytes("PNG") + HTML, 201, absent=b"<script"),
    "jpeg+html": Attack(lambda: image_bytes("JPEG") + HTML, 201, absent=b"<script"),
    "png-text-chunk-html": Attack(lambda: png_with_text_chunk(HTML), 201, absent=b"<script"),
    "jpeg-comment-html": Attack(lambda: jpeg_with_comment(HTML), 201, absent=b"<script"),
    "gif-js-polyglot": Attack(lambda: GIF_JS, 415, content_type="image/gif"),
    "svg-script": Attack(lambda: SVG, 415, content_type="image/svg+xml"),
    "html-named-png": Attack(lambda: HTML, 415),
    "png-signature-then-html": Attack(lambda: b"\x89PNG\r\n\x1a\n" + HTML, 422),
    "zip-named-png": Attack(lambda: ZIP, 415),
    "pdf": Attack(lambda: b"%PDF-1.7\n1 0 obj<<>>endobj\n%%EOF", 415),
}


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_a_hostile_upload_is_refused_or_stored_clean(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, name: str
) -> None:
    attack = ATTACKS[name]

    response = await upload(client, auth_headers(USER), attack.data(), "a.png", attack.content_type)

    if attack.status != 201:
        body = assert_problem(response, attack.status)
        kind = "/unsupported-media-type" if attack.status == 415 else "/unprocessable"
        assert body["type"].endswith(kind)
        if attack.detail:
            assert attack.detail in body["detail"], body
        objects = app.state.settings.objects_dir / "uploads"
        assert not objects.exists() or not any(objects.rglob("*.*"))
        return
    assert response.status_code == 201, response.text
    stored = await storage_of(app).get(response.json()["upload_key"])
    assert attack.absent is not None and attack.absent not in stored
    decode(stored)  # what is stored is a plain image


BAD_REQUESTS: dict[str, dict[str, object]] = {
    "json-body": {"json": {"file": "x"}},
    "raw-png-body": {"content": image_bytes("PNG"), "headers": {"Content-Type": "image/png"}},
    "form-urlencoded": {"data": {"file": "x"}},
    "multipart-no-boundary": {
        "content": b"--x\r\n\r\n--x--\r\n",
        "headers": {"Content-Type": "multipart/form-data"},
    },
    "multipart-wrong-field": {"files": {"image": ("a.png", image_bytes("PNG"), "image/png")}},
    "multipart-empty": {
        "content": b"--b--\r\n",
        "headers": {"Content-Type": "multipart/form-data; boundary=b"},
    },
    "multipart-text-file": {"files": {"file": (None, "not a file")}},
    "multipart-two-files": {
        "files": [("file", ("a.png", image_bytes("PNG"))), ("file", ("b.png", image_bytes("PNG")))]
    },
}


async def test_an_upload_in_the_wrong_shape_is_a_4xx_problem(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    for name, request in BAD_REQUESTS.items():
        headers = {**auth_headers(USER), **request.pop("headers", {})}  # type: ignore[dict-item]
        response = await client.post("/v1/uploads", headers=headers, **request)  # type: ignore[arg-type]

        assert response.status_code in (400, 415, 422), (name, response.text)
        body = assert_problem(response, response.status_code)
        assert body["type"] != "about:blank", (name, body)
        # not multipart at all: a 415 saying what to send, in the body and in Accept
        is_multipart = name.startswith("multipart-")
        assert (response.status_code == 415) is not is_multipart, (name, response.text)
        if not is_multipart:
            assert body["accepted"] == ["multipart/form-data"]
            assert response.headers["Accept"] == "multipart/form-data"


async def test_a_40_mb_upload_is_413_without_being_read_whole(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(USER)
    declared, pulled_declared = await pulled_while_posting(client, headers, 40 * MIB, True)
    chunked, pulled_chunked = await pulled_while_posting(client, headers, 40 * MIB, False)

    assert_problem(declared, 413)
    assert_problem(chunked, 413)
    # At most the 10 MiB limit, the multipart allowance and a piece: never the 40 MB.
    assert pulled_declared < 11 * MIB
    assert pulled_chunked < 11 * MIB


@functools.cache
def largest_accepted_png() -> bytes:
    """4096x4096 RGBA (the most MAX_UPLOAD_SIDE and MAX_UPLOAD_PIXELS allow), noisy enough
    to cost a real decode and re-encode, under MAX_UPLOAD_BYTES."""
    noise = Image.frombytes("RGBA", (512, 512), os.urandom(512 * 512 * 4))
    out = io.BytesIO()
    noise.resize((4096, 4096), Image.Resampling.NEAREST).save(out, "PNG", compress_level=1)
    return out.getvalue()


async def test_twelve_concurrent_largest_uploads_leave_other_requests_answering(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth_headers: Headers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = largest_accepted_png()
    assert len(data) < 10 * MIB
    headers = auth_headers(USER)
    assert (await client.get("/v1/me", headers=headers)).status_code == 200
    decoders: Decoders = app.state.services.decoders
    decoding = decoders.run
    started: list[object] = []

    async def counted(fn: Callable[..., object], /, *args: object) -> object:
        started.append(fn)
        return await decoding(fn, *args)

    monkeypatch.setattr(decoders, "run", counted)

    uploads = [asyncio.create_task(upload(client, headers, data)) for _ in range(12)]
    await wait_until(lambda: len(started) >= 12, "all twelve uploads to reach the decoders")
    me = await client.get("/v1/me", headers=headers)
    health = await client.get("/healthz")
    still_uploading = sum(not task.done() for task in uploads)
    answers = await asyncio.gather(*uploads)

    assert me.status_code == 200 and health.status_code == 200
    assert still_uploading > 0  # /v1/me answered while uploads were in progress
    for answer in answers:
        assert answer.status_code == 201, answer.text
        assert (answer.json()["width"], answer.json()["height"]) == (4096, 4096)
