"""Helpers for the generation tests: apps built with changed settings, images made with
Pillow, SSE parsing and database look-ups."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from app.config import Settings
from app.main import create_app
from app.services.storage.base import Storage
from tests.fakes.sse import SseEvent, SseParser

MakeApp = Callable[..., FastAPI]


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> MakeApp:
    """create_app() on this test's database and data dir, with some settings changed."""

    def make(**changes: object) -> FastAPI:
        return create_app(make_settings(**changes))

    return make


def storage_of(app: FastAPI) -> Storage:
    storage: Storage = app.state.services.storage
    return storage


# -- responses ------------------------------------------------------------------------------


def parse_sse(text: str) -> list[SseEvent]:
    parser = SseParser()
    events = [parser.feed(line) for line in text.splitlines()]
    return [e for e in events if e is not None]


# -- the database ---------------------------------------------------------------------------


async def balance(db: asyncpg.Connection, user_id: str) -> int:
    value = await db.fetchval("SELECT credits FROM users WHERE id = $1", user_id)
    assert value is not None, f"no user {user_id}"
    credits: int = value
    return credits


async def job_count(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM image_generation_jobs")
    return count


async def spend_rows(db: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    """The user's ledger rows for generations and refunds, oldest first."""
    rows: list[asyncpg.Record] = await db.fetch(
        """
        SELECT delta, reason, job_id, balance_after FROM credit_ledger
        WHERE user_id = $1 AND reason IN ('generate', 'style', 'edit', 'refund') ORDER BY id
        """,
        user_id,
    )
    return rows


# -- images ---------------------------------------------------------------------------------


def image_bytes(fmt: str, size: tuple[int, int] = (48, 32), **save: Any) -> bytes:
    mode = "P" if fmt == "GIF" else "RGB"
    image = Image.new(mode, size, 7 if mode == "P" else (200, 40, 90))
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit greyscale PNG of width x height black pixels: tens of KB compressed,
    hundreds of millions of pixels decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    compressed = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", compressed)
        + _chunk(b"IEND", b"")
    )


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def upload(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    data: bytes,
    filename: str = "image.png",
    content_type: str = "image/png",
) -> httpx.Response:
    return await client.post(
        "/v1/uploads", files={"file": (filename, data, content_type)}, headers=headers
    )


BOUNDARY = "atelier-test-boundary"


async def pulled_while_posting(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    total: int,
    declare_length: bool,
) -> tuple[httpx.Response, int]:
    """POST a multipart upload of `total` bytes, streamed in 64 KiB pieces; returns the
    answer and how many bytes the app pulled from the stream before answering."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.png"'
        "\r\nContent-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    payload = b"\x89PNG\r\n\x1a\n" + b"\x00" * (total - 8)
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        pieces = [head] + [payload[i : i + 64 * 1024] for i in range(0, total, 64 * 1024)] + [tail]
        for piece in pieces:
            pulled += len(piece)
            yield piece

    request_headers = {**headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if declare_length:
        request_headers["Content-Length"] = str(len(head) + total + len(tail))
    response = await client.post("/v1/uploads", content=body(), headers=request_headers)
    return response, pulled
