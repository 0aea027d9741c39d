"""The statements of an erasure: everything a user owns, deleted; run inside the caller's
transaction, after the users row was locked (`app.db.users.lock`)."""

from __future__ import annotations

import asyncpg


async def delete_likes_given(conn: asyncpg.Connection, user_id: str) -> int:
    """Take back every like the user gave, and each one off its image's count.

    The images are locked first, in id order (as the user-deletion trigger does), so an
    unlike of the user's still in flight finishes first; the DELETE then runs with a fresh
    snapshot and finds only the likes that remain, so none is taken off twice.
    """
    await conn.execute(
        """
        SELECT 1 FROM generated_images
        WHERE id IN (SELECT image_id FROM image_likes WHERE user_id = $1)
        ORDER BY id
        FOR NO KEY UPDATE
        """,
        user_id,
    )
    status = await conn.execute(
        """
        WITH gone AS (
            DELETE FROM image_likes WHERE user_id = $1 RETURNING image_id
        )
        UPDATE generated_images g SET likes_count = g.likes_count - 1
        FROM gone WHERE g.id = gone.image_id
        """,
        user_id,
    )
    return int(status.split()[-1])


async def delete_images(conn: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    """Delete the user's images (others' likes of them cascade; the feed trigger announces
    each public one `removed`); returns (id, storage_key) of each."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "DELETE FROM generated_images WHERE user_id = $1 RETURNING id, storage_key", user_id
    )
    return rows


async def delete_owned(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record:
    """Delete the user's packs, prompts, jobs and subscription; how many of each, and the
    unfinished jobs that were attempted (`attempted`: their ids, `attempts`: how many each)."""
    row = await conn.fetchrow(
        """
        WITH packs AS (
            DELETE FROM icon_packs WHERE user_id = $1 RETURNING 1
        ), prompts AS (
            DELETE FROM custom_prompts WHERE user_id = $1 RETURNING 1
        ), jobs AS (
            DELETE FROM image_generation_jobs WHERE user_id = $1 RETURNING id, status, attempts
        ), subscription AS (
            DELETE FROM subscriptions WHERE user_id = $1 RETURNING 1
        )
        SELECT (SELECT count(*) FROM packs) AS packs,
               (SELECT count(*) FROM prompts) AS prompts,
               (SELECT count(*) FROM jobs) AS jobs,
               (SELECT count(*) FROM subscription) AS subscriptions,
               (SELECT coalesce(array_agg(id), '{}') FROM jobs
                WHERE status <> 'completed' AND attempts > 0) AS attempted,
               (SELECT coalesce(array_agg(attempts), '{}') FROM jobs
                WHERE status <> 'completed' AND attempts > 0) AS attempts
        """,
        user_id,
    )
    assert row is not None
    return row
