"""The gallery: one's own images, the public feed, one image, likes, downloads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import TypeAdapter

from app.config import Settings
from app.db import images, likes
from app.errors import NotFound, Unauthorized
from app.schemas.gallery import DownloadLink, ImageItem, ImagePage, LikeState
from app.services import pack_marks, pagination
from app.services.realtime import Event
from app.services.storage.base import Storage, StorageError

log = logging.getLogger("atelier.gallery")

DOWNLOAD_TTL_SECONDS = 300


def image_url(storage: Storage, settings: Settings, record: Any) -> str:
    """A URL for the image: signed (or public) from its storage key; rows the mobile app
    wrote have no key, and their own image_url is used as it is."""
    key = record["storage_key"]
    if key:
        return storage.url(key, expires_in=settings.signed_url_ttl_seconds)
    url: str = record["image_url"]
    return url


def _fields(storage: Storage, settings: Settings, record: Any, viewer: str) -> dict[str, Any]:
    """An image row as ImageItem's fields, for `viewer`."""
    return {
        "id": record["id"],
        "image_url": image_url(storage, settings, record),
        "prompt": record["prompt"],
        "created_at": record["created_at"],
        "likes_count": record["likes_count"],
        "liked_by_me": bool(record.get("liked_by_me", False)),
        "visibility": record["visibility"],
        "width": record["width"],
        "height": record["height"],
        "model": record["model"],
        "pack_id": record["pack_id"],
        "mine": record["user_id"] == viewer,
    }


def to_item(storage: Storage, settings: Settings, record: Any, viewer: str) -> ImageItem:
    return ImageItem.model_validate(_fields(storage, settings, record, viewer))


# A page's items are validated in one call: a third less CPU than one model at a time.
_ITEMS: TypeAdapter[list[ImageItem]] = TypeAdapter(list[ImageItem])


@dataclass(frozen=True)
class Announced:
    """A new public image as the feed shows it to anyone but its owner and its likers
    (`mine` and `liked_by_me` false), with who they are: `likers`, empty but for an image
    made public again with the likes it had."""

    item: ImageItem
    owner: str
    likers: frozenset[str]  # of the viewers connected when it was built

    def view(self, viewer: str) -> tuple[bool, bool]:
        """(`mine`, `liked_by_me`) for `viewer`: the item's only parts that differ by viewer."""
        return self.owner == viewer, viewer in self.likers

    def seen_by(self, viewer: str) -> ImageItem:
        """The item as `viewer` sees it."""
        mine, liked = self.view(viewer)
        if not (mine or liked):
            return self.item
        return self.item.model_copy(update={"mine": mine, "liked_by_me": liked})


async def _read_public(pool: asyncpg.Pool, image_id: UUID) -> asyncpg.Record | None:
    async with pool.acquire() as conn:
        row = await images.get(conn, image_id)
    return row if row is not None and row["visibility"] == "public" else None


async def _likers(pool: asyncpg.Pool, image_id: UUID, viewers: list[str]) -> frozenset[str]:
    async with pool.acquire() as conn:
        return frozenset(await likes.likers(conn, image_id, viewers))


async def _announce(
    pool: asyncpg.Pool, storage: Storage, settings: Settings, event: Event, viewers: list[str]
) -> Announced | None:
    record: Any = event
    if event.get("partial"):
        record = await _read_public(pool, UUID(str(event["id"])))
        if record is None:
            return None
    item = to_item(storage, settings, record, viewer="")
    # A new image has no likes; one made public again may: which of this process's viewers
    # like it is read once per event (not every like, which the owner could make costly).
    likers = await _likers(pool, item.id, viewers) if item.likes_count else frozenset()
    return Announced(item, str(record["user_id"]), likers)


async def announced(
    pool: asyncpg.Pool,
    storage: Storage,
    settings: Settings,
    event: Event,
    viewers: Collection[str],
) -> Announced | None:
    """The feed item of an `image` notification, built once per event for every subscriber
    of the process (the URL signed once, the row read once), with which of `viewers` (the
    users whose streams the process holds, as the first of them builds it) like it. One
    too large for a NOTIFY payload arrives `partial` (its id only) and is read then. None
    when that image is no longer public."""
    build = event.once(
        "announced",
        lambda: asyncio.ensure_future(_announce(pool, storage, settings, event, list(viewers))),
    )
    return await asyncio.shield(build)


async def listing(
    conn: asyncpg.Connection,
    storage: Storage,
    settings: Settings,
    *,
    viewer: str,
    mine: bool,
    pack_id: UUID | None,
    cursor: str | None,
    limit: int,
) -> ImagePage:
    """The caller's images (mine=True) or the public feed, newest first, keyset-paged."""
    before = pagination.decode_time_id(cursor) if cursor else None
    rows = await images.page(
        conn,
        viewer=viewer,
        owner=viewer if mine else None,
        public_only=not mine,
        pack_id=pack_id,
        before=before,
        limit=limit + 1,
    )
    page, next_cursor = pagination.split_time_id(rows, limit)
    items = _ITEMS.validate_python([_fields(storage, settings, r, viewer) for r in page])
    return ImagePage(items=items, next_cursor=next_cursor)


async def get(
    conn: asyncpg.Connection, storage: Storage, settings: Settings, image_id: UUID, viewer: str
) -> ImageItem:
    row = await images.get_with_like(conn, image_id, viewer)
    if row is None:
        raise NotFound("No such image.")
    return to_item(storage, settings, row, viewer)


async def set_visibility(
    conn: asyncpg.Connection,
    storage: Storage,
    settings: Settings,
    image_id: UUID,
    owner: str,
    visibility: str,
) -> ImageItem:
    changed = await images.set_visibility(conn, image_id, owner, visibility)
    if changed is None:
        raise NotFound("No such image.")
    if changed["was"] != visibility:  # what others see of its pack changed
        await pack_marks.mark_updated(conn, [changed["pack_id"]])
    return await get(conn, storage, settings, image_id, owner)


async def delete(pool: asyncpg.Pool, storage: Storage, image_id: UUID, owner: str | None) -> None:
    """Delete the row (its likes cascade), then the object: no row ever points at a missing
    object. If the store fails after the row is gone, the object is an orphan, logged. The
    connection goes back to the pool before the store is asked. `owner` None: whoever's it
    is (an administrator's takedown)."""
    async with pool.acquire() as conn:
        row = await images.delete(conn, image_id, owner)
    if row is None:
        raise NotFound("No such image.")
    if row["storage_key"]:
        try:
            await storage.delete(row["storage_key"])
        except StorageError as exc:
            log.warning(
                "image %s deleted; its object %s remains: %s", image_id, row["storage_key"], exc
            )
    if row["pack_id"] is not None:
        async with pool.acquire() as conn:
            await pack_marks.mark_updated(conn, [row["pack_id"]])


async def download(
    conn: asyncpg.Connection, storage: Storage, image_id: UUID, viewer: str | None
) -> DownloadLink:
    """A short-lived link: to anyone for a public image; else to its owner, and a caller
    without a token is told to send one (401, as on every other protected route; whether
    the id exists is not said)."""
    row = await images.get_readable(conn, image_id, viewer or "")
    if row is None and viewer is None:
        raise Unauthorized(
            "This image is not public: send 'Authorization: Bearer <session token or API key>'.",
            sent=False,
        )
    if row is None:
        raise NotFound("No such image.")
    if not row["storage_key"]:
        return DownloadLink(url=row["image_url"], expires_in=0)
    url = storage.url(row["storage_key"], expires_in=DOWNLOAD_TTL_SECONDS)
    return DownloadLink(url=url, expires_in=DOWNLOAD_TTL_SECONDS)


async def like(conn: asyncpg.Connection, image_id: UUID, user_id: str, on: bool) -> LikeState:
    """Idempotent per user: liking twice counts once; the count moves with the row."""
    row = await (likes.like if on else likes.unlike)(conn, image_id, user_id)
    if row is None:
        raise NotFound("No such image.")
    return LikeState(liked=on, likes_count=row["likes_count"])
