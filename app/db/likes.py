"""`image_likes`: one row per (image, user); `generated_images.likes_count` changes in the
same statement as the row, so the count cannot drift from the rows."""

from __future__ import annotations

from uuid import UUID

import asyncpg


async def like(conn: asyncpg.Connection, image_id: UUID, user_id: str) -> asyncpg.Record | None:
    """Like an image the user may see; returns (likes_count, changed) or None if not visible."""
    return await conn.fetchrow(
        """
        WITH visible AS (
            SELECT id, likes_count FROM generated_images
            WHERE id = $1 AND deleted_at IS NULL AND (user_id = $2 OR visibility = 'public')
            FOR UPDATE
        ), added AS (
            INSERT INTO image_likes (image_id, user_id)
            SELECT id, $2 FROM visible
            ON CONFLICT DO NOTHING
            RETURNING image_id
        ), counted AS (
            UPDATE generated_images SET likes_count = likes_count + 1
            FROM added WHERE generated_images.id = added.image_id
            RETURNING likes_count
        )
        SELECT COALESCE((SELECT likes_count FROM counted), visible.likes_count) AS likes_count,
               EXISTS (SELECT 1 FROM added) AS changed
        FROM visible
        """,
        image_id,
        user_id,
    )


_UNLIKE = """
    WITH visible AS (
        SELECT id, likes_count FROM generated_images
        WHERE id = $1 AND deleted_at IS NULL AND (user_id = $2 OR visibility = 'public')
        FOR UPDATE
    ), removed AS (
        DELETE FROM image_likes USING visible
        WHERE image_likes.image_id = visible.id AND image_likes.user_id = $2
        RETURNING image_likes.image_id
    ), counted AS (
        UPDATE generated_images SET likes_count = likes_count - 1
        FROM removed WHERE generated_images.id = removed.image_id
        RETURNING likes_count
    )
    SELECT COALESCE((SELECT likes_count FROM counted), visible.likes_count) AS likes_count,
           EXISTS (SELECT 1 FROM removed) AS changed
    FROM visible
"""


async def unlike(conn: asyncpg.Connection, image_id: UUID, user_id: str) -> asyncpg.Record | None:
    """Take a like back; returns (likes_count, changed) or None if the image is not visible.

    The statement may wait for the image while a like by the same user holds it; that like
    commits after the statement's snapshot, so its DELETE does not see it. When nothing was
    removed the statement runs once more, with a new snapshot: it finds that like (or,
    truly, none)."""
    row = await conn.fetchrow(_UNLIKE, image_id, user_id)
    if row is not None and not row["changed"]:
        row = await conn.fetchrow(_UNLIKE, image_id, user_id)
    return row


async def likers(conn: asyncpg.Connection, image_id: UUID, among: list[str]) -> list[str]:
    """Which of `among` like the image (a public image made private keeps its likes, and
    shows them again when it is public once more): one index probe each, however many
    likes it has."""
    rows = await conn.fetch(
        "SELECT user_id FROM image_likes WHERE image_id = $1 AND user_id = ANY($2::text[])",
        image_id,
        among,
    )
    return [row["user_id"] for row in rows]
