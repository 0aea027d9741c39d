"""`custom_prompts` (shared with the mobile app, which reads and writes it directly)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from app.db.where import Where

COLUMNS = "id, user_id, title, prompt_text, thumbnail_url, secondary_image_url, created_at"
_FIELDS = ("title", "prompt_text", "thumbnail_url", "secondary_image_url")


async def page(
    conn: asyncpg.Connection, user_id: str, before: tuple[datetime, UUID] | None, limit: int
) -> list[asyncpg.Record]:
    # With a cursor, it seeks to it in the user's index (`Where`).
    where = Where(user_id, limit)
    where.add("user_id = $1")
    if before is not None:
        where.add("(created_at, id) < ({}, {})", *before)
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM custom_prompts
        WHERE {where}
        ORDER BY created_at DESC, id DESC
        LIMIT $2
        """,
        *where.args,
    )
    return rows


async def get(conn: asyncpg.Connection, prompt_id: UUID, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM custom_prompts WHERE id = $1 AND user_id = $2", prompt_id, user_id
    )


async def create(
    conn: asyncpg.Connection,
    user_id: str,
    *,
    title: str | None,
    prompt_text: str,
    thumbnail_url: str | None,
    secondary_image_url: str | None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""
        INSERT INTO custom_prompts (user_id, title, prompt_text, thumbnail_url, secondary_image_url)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {COLUMNS}
        """,
        user_id,
        title,
        prompt_text,
        thumbnail_url,
        secondary_image_url,
    )
    assert row is not None
    return row


async def update(
    conn: asyncpg.Connection, prompt_id: UUID, user_id: str, changes: dict[str, str | None]
) -> asyncpg.Record | None:
    """Set the given fields (a subset of title, prompt_text, thumbnail_url, secondary_image_url)."""
    values = [changes.get(f) for f in _FIELDS]
    flags = [f in changes for f in _FIELDS]
    return await conn.fetchrow(
        f"""
        UPDATE custom_prompts SET
            title = CASE WHEN $3 THEN $4 ELSE title END,
            prompt_text = CASE WHEN $5 THEN $6 ELSE prompt_text END,
            thumbnail_url = CASE WHEN $7 THEN $8 ELSE thumbnail_url END,
            secondary_image_url = CASE WHEN $9 THEN $10 ELSE secondary_image_url END
        WHERE id = $1 AND user_id = $2
        RETURNING {COLUMNS}
        """,
        prompt_id,
        user_id,
        *[item for pair in zip(flags, values, strict=True) for item in pair],
    )


async def delete(conn: asyncpg.Connection, prompt_id: UUID, user_id: str) -> bool:
    status = await conn.execute(
        "DELETE FROM custom_prompts WHERE id = $1 AND user_id = $2", prompt_id, user_id
    )
    return bool(status == "DELETE 1")
