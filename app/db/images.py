"""The `generated_images` table (shared with the mobile app, which inserts rows of its own)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from app.db.where import Where

COLUMNS = (
    "id, user_id, image_url, prompt, storage_key, job_id, model, pack_id, visibility, "
    "likes_count, width, height, created_at"
)


async def get(conn: asyncpg.Connection, image_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM generated_images WHERE id = $1 AND deleted_at IS NULL",
        image_id,
    )


async def get_readable(
    conn: asyncpg.Connection, image_id: UUID, user_id: str
) -> asyncpg.Record | None:
    """The image if `user_id` may see it: their own, or public."""
    return await conn.fetchrow(
        f"""
        SELECT {COLUMNS} FROM generated_images
        WHERE id = $1 AND deleted_at IS NULL AND (user_id = $2 OR visibility = 'public')
        """,
        image_id,
        user_id,
    )


_LIST_COLUMNS = ", ".join("i." + c.strip() for c in COLUMNS.split(","))


async def page(
    conn: asyncpg.Connection,
    *,
    viewer: str,
    owner: str | None,
    public_only: bool,
    pack_id: UUID | None,
    before: tuple[object, UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """A page of images newest first, with `liked_by_me` for `viewer`.

    `owner`: only that user's images; `public_only`: only public ones; `pack_id`: only that
    pack's icons; `before`: the (created_at, id) of the previous page's last item.

    Only the filters given are in the statement (`Where`): the owner's page and the public
    feed walk their index newest first and stop at LIMIT; a pack's page reads the pack's
    rows, with the owner's index entries, and sorts them (tests/gallery/test_page_plans.py).
    """
    where = Where(viewer, limit)
    where.add("i.deleted_at IS NULL")
    if owner is not None:
        where.add("i.user_id = {}", owner)
    if public_only:
        where.add("i.visibility = 'public'")
    if pack_id is not None:
        where.add("i.pack_id = {}", pack_id)
    if before is not None:
        where.add("(i.created_at, i.id) < ({}, {})", *before)
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT {_LIST_COLUMNS},
               EXISTS (SELECT 1 FROM image_likes l
                       WHERE l.image_id = i.id AND l.user_id = $1) AS liked_by_me
        FROM generated_images i
        WHERE {where}
        ORDER BY i.created_at DESC, i.id DESC
        LIMIT $2
        """,
        *where.args,
    )
    return rows


async def get_with_like(
    conn: asyncpg.Connection, image_id: UUID, viewer: str
) -> asyncpg.Record | None:
    """The image if `viewer` may see it (own or public), with `liked_by_me`."""
    return await conn.fetchrow(
        f"""
        SELECT {_LIST_COLUMNS},
               EXISTS (SELECT 1 FROM image_likes l
                       WHERE l.image_id = i.id AND l.user_id = $2) AS liked_by_me
        FROM generated_images i
        WHERE i.id = $1 AND i.deleted_at IS NULL AND (i.user_id = $2 OR i.visibility = 'public')
        """,
        image_id,
        viewer,
    )


async def set_visibility(
    conn: asyncpg.Connection, image_id: UUID, owner: str, visibility: str
) -> asyncpg.Record | None:
    """Set the owner's image's visibility; None when there is no such image, else what it
    `was` and its `pack_id`."""
    return await conn.fetchrow(
        """
        WITH old AS (
            SELECT id, visibility FROM generated_images
            WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL
            FOR NO KEY UPDATE
        )
        UPDATE generated_images i SET visibility = $3 FROM old WHERE i.id = old.id
        RETURNING old.visibility AS was, i.pack_id
        """,
        image_id,
        owner,
        visibility,
    )


async def delete(
    conn: asyncpg.Connection, image_id: UUID, owner: str | None
) -> asyncpg.Record | None:
    """Delete the owner's image row (owner None: anyone's); its likes go with it. Returns
    its storage key and `pack_id`, the pack it leaves (None: none, or it was already gone
    from the gallery), to mark updated."""
    return await conn.fetchrow(
        """
        DELETE FROM generated_images WHERE id = $1 AND ($2::text IS NULL OR user_id = $2)
        RETURNING id, storage_key, CASE WHEN deleted_at IS NULL THEN pack_id END AS pack_id
        """,
        image_id,
        owner,
    )


async def set_pack(
    conn: asyncpg.Connection,
    image_id: UUID,
    owner: str,
    pack_id: UUID | None,
    only_from: UUID | None = None,
) -> asyncpg.Record | None:
    """File the owner's image into `pack_id` (None: out of any pack; `only_from`: only if it
    is in that pack now). None if there is no such image, or no such pack of the owner's
    (one deleted meanwhile included: the lock waits for a deletion in flight); else its
    `left_pack`, the pack it was in, to mark updated.

    The image's row is locked to read the pack it leaves, after the pack it joins is
    checked (as before: a deletion of that pack, which waits for the image rows in it, is
    waited for first)."""
    return await conn.fetchrow(
        """
        WITH old AS (
            SELECT id, pack_id FROM generated_images
            WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL
              AND ($4::uuid IS NULL OR pack_id = $4)
              AND ($3::uuid IS NULL OR EXISTS (
                    SELECT 1 FROM icon_packs p WHERE p.id = $3 AND p.user_id = $2
                    FOR KEY SHARE))
            FOR NO KEY UPDATE
        )
        UPDATE generated_images i SET pack_id = $3 FROM old WHERE i.id = old.id
        RETURNING old.pack_id AS left_pack
        """,
        image_id,
        owner,
        pack_id,
        only_from,
    )


async def pack_reference_keys(conn: asyncpg.Connection, pack_id: UUID, limit: int) -> list[str]:
    """Storage keys of the pack's newest icons, to show a provider the pack's look."""
    rows = await conn.fetch(
        """
        SELECT storage_key FROM generated_images
        WHERE pack_id = $1 AND deleted_at IS NULL AND storage_key IS NOT NULL
        ORDER BY created_at DESC, id DESC
        LIMIT $2
        """,
        pack_id,
        limit,
    )
    return [r["storage_key"] for r in rows]


async def pack_icons(
    conn: asyncpg.Connection, pack_id: UUID, *, only_public: bool, limit: int
) -> list[asyncpg.Record]:
    """The pack's icons in the order they were asked for (a set's in its prompts' order,
    whatever order they finished in), with what an export needs; only the public ones when
    `only_public`."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT i.id, i.prompt, i.storage_key, i.width, i.height, i.created_at
        FROM generated_images i
        LEFT JOIN image_generation_jobs j ON j.id = i.job_id
        WHERE i.pack_id = $1 AND i.deleted_at IS NULL AND (NOT $2 OR i.visibility = 'public')
        ORDER BY COALESCE(j.created_at, i.created_at), (j.params->>'set_index')::int, i.id
        LIMIT $3
        """,
        pack_id,
        only_public,
        limit,
    )
    return rows
