"""Icon packs: sets of a user's icons that keep one look."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from app.config import Settings
from app.db import images, packs
from app.errors import NotFound, Unprocessable
from app.schemas.gallery import Pack, PackCreate, PackDetail, PackPage, PackUpdate
from app.services import gallery, pack_marks, pagination
from app.services.storage.base import Storage


def _schema(row: asyncpg.Record) -> Pack:
    return Pack.model_validate({k: row[k] for k in Pack.model_fields})


async def listing(
    conn: asyncpg.Connection, user_id: str, cursor: str | None, limit: int
) -> PackPage:
    before = pagination.decode_time_id(cursor) if cursor else None
    rows = await packs.page(conn, user_id, before, limit + 1)
    page, next_cursor = pagination.split_time_id(rows, limit)
    return PackPage(items=[_schema(r) for r in page], next_cursor=next_cursor)


async def get_own(conn: asyncpg.Connection, pack_id: UUID, user_id: str) -> asyncpg.Record:
    row = await packs.get(conn, pack_id, user_id)
    if row is None:
        raise NotFound("No such pack.")
    return row


async def detail(
    conn: asyncpg.Connection,
    storage: Storage,
    settings: Settings,
    pack_id: UUID,
    viewer: str,
    icons_limit: int,
) -> PackDetail:
    """The pack with its newest icons, if `viewer` may read it: their own, or anyone's public
    pack (`packs.get_readable`, the rule its export follows too). Another user's private
    pack is a 404, as everywhere. Another user sees the public icons only (all of a public
    pack's, unless one was made private since it was read), paged on by /v1/feed?pack_id;
    the owner sees all of them, paged on by /v1/images?pack_id."""
    row = await packs.get_readable(conn, pack_id, viewer)
    if row is None:
        raise NotFound("No such pack.")
    page = await gallery.listing(
        conn,
        storage,
        settings,
        viewer=viewer,
        mine=row["user_id"] == viewer,
        pack_id=pack_id,
        cursor=None,
        limit=icons_limit,
    )
    return PackDetail(
        **_schema(row).model_dump(), icons=page.items, icons_next_cursor=page.next_cursor
    )


async def create(conn: asyncpg.Connection, user_id: str, body: PackCreate) -> Pack:
    return _schema(await packs.create(conn, user_id, body.name, body.style_prompt))


async def update(conn: asyncpg.Connection, pack_id: UUID, user_id: str, body: PackUpdate) -> Pack:
    sent = body.model_fields_set
    if "name" in sent and body.name is None:
        raise Unprocessable("name cannot be cleared.")
    row = await packs.update(
        conn,
        pack_id,
        user_id,
        set_name="name" in sent,
        name=body.name,
        set_style="style_prompt" in sent,
        style_prompt=body.style_prompt,
        set_cover="cover_image_id" in sent,
        cover_image_id=body.cover_image_id,
    )
    if row is None:
        await get_own(conn, pack_id, user_id)  # 404 for a pack that is not the caller's
        raise NotFound("No such image to use as the cover.")
    return _schema(row)


async def delete(conn: asyncpg.Connection, pack_id: UUID, user_id: str) -> None:
    if not await packs.delete(conn, pack_id, user_id):
        raise NotFound("No such pack.")


async def add_icon(conn: asyncpg.Connection, pack_id: UUID, user_id: str, image_id: UUID) -> None:
    """File one of the caller's images into the pack (moving it from any other pack); the
    packs it joins and leaves are marked updated once that has committed (`pack_marks`),
    none when it was in this one already."""
    async with conn.transaction():
        await get_own(conn, pack_id, user_id)
        moved = await images.set_pack(conn, image_id, user_id, pack_id)
        if moved is None:
            await get_own(conn, pack_id, user_id)  # 404 for a pack deleted meanwhile
            raise NotFound("No such image of yours.")
    if moved["left_pack"] != pack_id:
        await pack_marks.mark_updated(conn, [moved["left_pack"], pack_id])


async def remove_icon(
    conn: asyncpg.Connection, pack_id: UUID, user_id: str, image_id: UUID
) -> None:
    """Take the image out of the pack (then marked updated); it stays in the gallery."""
    await get_own(conn, pack_id, user_id)
    if await images.set_pack(conn, image_id, user_id, None, only_from=pack_id) is None:
        raise NotFound("That image is not in this pack.")
    await pack_marks.mark_updated(conn, [pack_id])


async def generation_context(
    conn: asyncpg.Connection, pack_id: UUID, user_id: str, reference_limit: int
) -> tuple[str | None, list[str]]:
    """(the pack's style prompt, storage keys of up to `reference_limit` of its icons)."""
    row = await get_own(conn, pack_id, user_id)
    keys = await images.pack_reference_keys(conn, pack_id, reference_limit)
    return row["style_prompt"], keys
