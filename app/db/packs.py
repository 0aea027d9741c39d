"""`icon_packs`: a user's sets of icons that share one look."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import asyncpg

from app.db.where import Where

COLUMNS = "id, user_id, name, style_prompt, cover_image_id, created_at, updated_at"
_P_COLUMNS = ", ".join("p." + c.strip() for c in COLUMNS.split(","))


async def touch(
    conn: asyncpg.Connection, pack_ids: Iterable[UUID | None], *, wait_seconds: float | None = None
) -> None:
    """Mark the packs changed: their `updated_at` (the table's trigger sets it) moves when
    their icons do, as it does for a rename.

    Its own statement, run after the write that moved the icons has committed, holding no
    other lock: in that write's statement it held the icon's row while it waited for the
    pack, and a deletion of the pack (or of an image that is another pack's cover) takes
    them the other way round, a deadlock; and only after that commit is the time it sets
    later than the icon it announces (a pack's `updated_at` never older than its newest
    icon, whatever completes beside it). Several packs are locked in id order; a pack
    deleted meanwhile is not there to mark. Not a trigger on `generated_images`: the mobile
    app writes that table too, and its writes stay as they were (an icon it deletes leaves
    its pack's `updated_at` as it was). `wait_seconds`: how long it may wait for the packs
    (asyncpg cancels it then: TimeoutError)."""
    ids = sorted({pack_id for pack_id in pack_ids if pack_id is not None})
    if not ids:
        return
    await conn.execute(
        """
        UPDATE icon_packs SET updated_at = now()
        WHERE id IN (SELECT id FROM icon_packs WHERE id = ANY($1::uuid[])
                     ORDER BY id FOR NO KEY UPDATE)
        """,
        ids,
        timeout=wait_seconds,
    )


async def page(
    conn: asyncpg.Connection, user_id: str, before: tuple[datetime, UUID] | None, limit: int
) -> list[asyncpg.Record]:
    # With a cursor, it seeks to it in the user's index (`Where`).
    where = Where(user_id, limit)
    where.add("p.user_id = $1")
    if before is not None:
        where.add("(p.created_at, p.id) < ({}, {})", *before)
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT {_P_COLUMNS},
               (SELECT count(*) FROM generated_images i
                WHERE i.pack_id = p.id AND i.deleted_at IS NULL) AS icon_count
        FROM icon_packs p
        WHERE {where}
        ORDER BY p.created_at DESC, p.id DESC
        LIMIT $2
        """,
        *where.args,
    )
    return rows


async def get(conn: asyncpg.Connection, pack_id: UUID, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {_P_COLUMNS},
               (SELECT count(*) FROM generated_images i
                WHERE i.pack_id = p.id AND i.deleted_at IS NULL) AS icon_count
        FROM icon_packs p WHERE p.id = $1 AND p.user_id = $2
        """,
        pack_id,
        user_id,
    )


async def create(
    conn: asyncpg.Connection, user_id: str, name: str, style_prompt: str | None
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""
        INSERT INTO icon_packs (user_id, name, style_prompt) VALUES ($1, $2, $3)
        RETURNING {COLUMNS}, 0::bigint AS icon_count
        """,
        user_id,
        name,
        style_prompt,
    )
    assert row is not None
    return row


async def update(
    conn: asyncpg.Connection,
    pack_id: UUID,
    user_id: str,
    *,
    set_name: bool,
    name: str | None,
    set_style: bool,
    style_prompt: str | None,
    set_cover: bool,
    cover_image_id: UUID | None,
) -> asyncpg.Record | None:
    """Change the given fields; a cover must be one of the owner's own images."""
    return await conn.fetchrow(
        f"""
        UPDATE icon_packs p SET
            name = CASE WHEN $3 THEN $4 ELSE p.name END,
            style_prompt = CASE WHEN $5 THEN $6 ELSE p.style_prompt END,
            cover_image_id = CASE WHEN $7 THEN $8::uuid ELSE p.cover_image_id END
        WHERE p.id = $1 AND p.user_id = $2
          AND (NOT $7 OR $8::uuid IS NULL OR EXISTS (
                SELECT 1 FROM generated_images i
                WHERE i.id = $8 AND i.user_id = $2 AND i.deleted_at IS NULL
                FOR KEY SHARE))  -- an image deleted meanwhile is no cover (not an FK error)
        RETURNING {_P_COLUMNS},
            (SELECT count(*) FROM generated_images i
             WHERE i.pack_id = p.id AND i.deleted_at IS NULL) AS icon_count
        """,
        pack_id,
        user_id,
        set_name,
        name,
        set_style,
        style_prompt,
        set_cover,
        cover_image_id,
    )


async def delete(conn: asyncpg.Connection, pack_id: UUID, user_id: str) -> bool:
    """Delete the pack; its icons stay in the gallery (their pack_id is set to NULL)."""
    status = await conn.execute(
        "DELETE FROM icon_packs WHERE id = $1 AND user_id = $2", pack_id, user_id
    )
    return bool(status == "DELETE 1")


async def get_readable(
    conn: asyncpg.Connection, pack_id: UUID, viewer: str
) -> asyncpg.Record | None:
    """The pack if `viewer` may read it (and so export it): their own, or public, that is,
    holding at least one icon and only public ones (so it never shows a private image).

    The one definition of a public pack, for its page and its export alike. Another user's
    view hides a cover that is not public (a cover may be any of the owner's images).
    """
    return await conn.fetchrow(
        """
        SELECT p.id, p.user_id, p.name, p.style_prompt, p.created_at, p.updated_at,
               CASE WHEN p.user_id = $2 OR EXISTS (
                        SELECT 1 FROM generated_images c
                        WHERE c.id = p.cover_image_id AND c.deleted_at IS NULL
                          AND c.visibility = 'public')
                    THEN p.cover_image_id END AS cover_image_id,
               (SELECT count(*) FROM generated_images i
                WHERE i.pack_id = p.id AND i.deleted_at IS NULL) AS icon_count
        FROM icon_packs p
        WHERE p.id = $1 AND (p.user_id = $2 OR (
            EXISTS (SELECT 1 FROM generated_images i
                    WHERE i.pack_id = p.id AND i.deleted_at IS NULL)
            AND NOT EXISTS (SELECT 1 FROM generated_images i
                            WHERE i.pack_id = p.id AND i.deleted_at IS NULL
                              AND i.visibility <> 'public')))
        """,
        pack_id,
        viewer,
    )
