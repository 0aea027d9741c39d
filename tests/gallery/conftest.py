"""Helpers for the gallery tests: images made the way the worker makes them (a row with a
storage key, and a real object in local storage) or the way the mobile app does (a row with
only user_id and image_url), and generations through the API."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from app.config import Settings
from app.main import create_app
from app.services.storage.base import Storage, generation_key

Headers = Callable[..., dict[str, str]]
MakeApp = Callable[..., FastAPI]


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> MakeApp:
    """create_app() on this test's database and data dir, with some settings changed."""

    def make(**changes: object) -> FastAPI:
        return create_app(make_settings(**changes))

    return make


# -- rows -----------------------------------------------------------------------------------


async def ensure_user(db: asyncpg.Connection, user_id: str) -> None:
    """A users row as the mobile app creates it (no ledger: the service opens it later)."""
    await db.execute(
        "INSERT INTO users (id, email, credits) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
        user_id,
        f"{user_id}@example.test",
    )


async def insert_image(
    db: asyncpg.Connection,
    user_id: str,
    *,
    visibility: str = "private",
    created_at: datetime | None = None,
    prompt: str | None = "a paper boat",
    image_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A generated_images row the way the worker writes one (storage key, canonical URL);
    its object is not stored (see `store_object`)."""
    await ensure_user(db, user_id)
    image_id = image_id or uuid.uuid4()
    job_id = uuid.uuid4()
    await db.execute(
        """
        INSERT INTO generated_images (
            id, user_id, image_url, prompt, storage_key, job_id, model, visibility,
            width, height, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, 'local-test', $7, 8, 8, COALESCE($8, now()))
        """,
        image_id,
        user_id,
        f"http://127.0.0.1:8000/v1/images/{image_id}/download",
        prompt,
        generation_key(job_id),
        job_id,
        visibility,
        created_at,
    )
    return image_id


async def insert_mobile_image(db: asyncpg.Connection, user_id: str, image_url: str) -> uuid.UUID:
    """A row exactly as the mobile app inserts it: user_id and image_url, nothing else."""
    await ensure_user(db, user_id)
    row = await db.fetchrow(
        "INSERT INTO generated_images (user_id, image_url) VALUES ($1, $2) RETURNING *",
        user_id,
        image_url,
    )
    assert row is not None
    image_id: uuid.UUID = row["id"]
    return image_id


async def storage_key_of(db: asyncpg.Connection, image_id: uuid.UUID) -> str:
    key: str | None = await db.fetchval(
        "SELECT storage_key FROM generated_images WHERE id = $1", image_id
    )
    assert key is not None
    return key


def png_bytes(color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, format="PNG")
    return out.getvalue()


async def store_object(storage: Storage, key: str, data: bytes | None = None) -> bytes:
    data = data if data is not None else png_bytes()
    await storage.put(key, data, "image/png")
    return data


def services_of(app: FastAPI) -> Any:
    return app.state.services


async def like_rows(db: asyncpg.Connection, image_id: uuid.UUID) -> list[str]:
    rows = await db.fetch(
        "SELECT user_id FROM image_likes WHERE image_id = $1 ORDER BY user_id", image_id
    )
    return [r["user_id"] for r in rows]


async def likes_count(db: asyncpg.Connection, image_id: uuid.UUID) -> int:
    value = await db.fetchval("SELECT likes_count FROM generated_images WHERE id = $1", image_id)
    assert value is not None
    count: int = value
    return count


# -- responses ------------------------------------------------------------------------------


async def generate(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    prompt: str = "a paper crane",
    visibility: str = "private",
) -> dict[str, Any]:
    """A finished generation through the API (the app's in-process local worker)."""
    response = await client.post(
        "/v1/generations",
        json={"prompt": prompt, "visibility": visibility},
        headers={**headers, "Prefer": "wait=10"},
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["status"] == "completed", job
    return job
