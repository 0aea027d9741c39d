"""The gallery: the caller's images, one image, likes, downloads, and the public feed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import RedirectResponse
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event

from app.deps import Conn, CurrentUser, JsonBodyRoute, OptionalUser, Services, StreamUser, Svc
from app.openapi import ANY_OPERATION, header_docs, responses, sse_events
from app.schemas.common import Cursor, Limit
from app.schemas.events import FEED_EVENTS
from app.schemas.gallery import DownloadLink, ImageItem, ImagePage, ImageUpdate, LikeState
from app.services import gallery
from app.services.realtime import FEED_CHANNEL, Event

router = APIRouter(
    prefix="/v1",
    tags=["gallery"],
    responses=responses(*ANY_OPERATION, 401, 503),
    route_class=JsonBodyRoute,
)


@router.get(
    "/images",
    operation_id="list_my_images",
    response_model=ImagePage,
    responses=responses(400, 422),
)
async def list_my_images(
    user: CurrentUser,
    conn: Conn,
    svc: Svc,
    cursor: Cursor = None,
    limit: Limit = 20,
    pack_id: Annotated[UUID | None, Query(description="Only this pack's icons.")] = None,
) -> ImagePage:
    """The caller's images, newest first (rows the mobile app saved included)."""
    return await gallery.listing(
        conn,
        svc.storage,
        svc.settings,
        viewer=user.id,
        mine=True,
        pack_id=pack_id,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/feed", operation_id="list_feed", response_model=ImagePage, responses=responses(400, 422)
)
async def list_feed(
    user: CurrentUser,
    conn: Conn,
    svc: Svc,
    cursor: Cursor = None,
    limit: Limit = 20,
    pack_id: Annotated[
        UUID | None, Query(description="Only this pack's public icons (anyone's pack).")
    ] = None,
) -> ImagePage:
    """Public images from everyone, newest first, with like counts; with `pack_id`, the
    public icons of that pack (how another user's public pack pages on)."""
    return await gallery.listing(
        conn,
        svc.storage,
        svc.settings,
        viewer=user.id,
        mine=False,
        pack_id=pack_id,
        cursor=cursor,
        limit=limit,
    )


# The keep-alive comment's interval, as FastAPI's own SSE streams send it.
KEEPALIVE_SECONDS = 15.0
_RESYNC_FRAME = format_sse_event(event="resync", data_str="{}")


def _compact(data: dict[str, object]) -> str:
    """JSON as the other events' data is written (pydantic's): no spaces."""
    return json.dumps(data, separators=(",", ":"))


def _shared_frame(event: Event, name: str, data: dict[str, object]) -> bytes:
    """The frame every stream sends for `event`: encoded once, on the event."""
    return event.once(name, lambda: format_sse_event(event=name, data_str=_compact(data)))


async def _feed_frame(svc: Services, event: dict[str, Any], viewer: str) -> bytes | None:
    """What one stream sends for a notification; built once per event (and per view, for
    an image: its owner sees `mine`, its likers `liked_by_me`), not once per stream."""
    if not isinstance(event, Event):  # RESYNC: events were dropped or missed
        return _RESYNC_FRAME
    kind = event.get("type")
    if kind == "likes":
        return _shared_frame(
            event, "likes", {"id": event["id"], "likes_count": event["likes_count"]}
        )
    if kind == "removed":
        return _shared_frame(event, "removed", {"id": event["id"]})
    if kind == "image":
        found = await gallery.announced(
            svc.pool, svc.storage, svc.settings, event, svc.feed_viewers.keys()
        )
        if found is None:
            return None
        return event.once(
            ("image", *found.view(viewer)),
            lambda: format_sse_event(
                event="image",
                data_str=found.seen_by(viewer).model_dump_json(),
                id=str(found.item.id),
            ),
        )
    return None


async def _feed_stream(
    svc: Services, user_id: str, last_event_id: str | None
) -> AsyncIterator[bytes]:
    async with svc.hub.subscribe(FEED_CHANNEL) as sub, svc.feed_viewer(user_id):
        # An id on `ready` too: a client that reconnects after seeing only `likes` or
        # `removed` (which carry none) still sends Last-Event-ID, and so learns to resync.
        yield format_sse_event(
            event="ready", data_str=_compact({"user_id": user_id}), id=f"ready-{uuid4()}"
        )
        if last_event_id is not None:
            yield _RESYNC_FRAME
        while True:
            event = await sub.get(KEEPALIVE_SECONDS)
            if event is None:
                yield KEEPALIVE_COMMENT
                continue
            frame = await _feed_frame(svc, event, user_id)
            if frame is not None:
                yield frame


@router.get(
    "/feed/events",
    operation_id="stream_feed_events",
    # Not response_class=EventSourceResponse: FastAPI then encodes each yielded item itself.
    response_class=Response,
    response_model=None,
    responses={200: sse_events("The feed's events, until the client leaves", *FEED_EVENTS)},
)
async def stream_feed_events(
    user: StreamUser,
    svc: Svc,
    last_event_id: Annotated[str | None, Header(max_length=200)] = None,
) -> EventSourceResponse:
    """Server-sent events: `ready` (subscribed), `image` (a new public image, as a feed
    item), `likes` ({id, likes_count}), `removed` ({id}: a public image was deleted or made
    private) and `resync` (events were missed: fetch /v1/feed again). A reconnect that sends
    `Last-Event-ID` gets `resync` right after `ready`: what happened while it was away is
    not replayed."""
    # The stream's bytes are written as they are (not through FastAPI's per-item SSE
    # encoding and its two extra tasks per stream): one event reaching a thousand streams
    # is one shared frame and one hop each (bench/feed_clients.py measures it).
    return EventSourceResponse(
        _feed_stream(svc, user.id, last_event_id),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/images/{image_id}",
    operation_id="get_image",
    response_model=ImageItem,
    responses=responses(404, 422),
)
async def get_image(image_id: UUID, user: CurrentUser, conn: Conn, svc: Svc) -> ImageItem:
    """One image: the caller's own, or a public one."""
    return await gallery.get(conn, svc.storage, svc.settings, image_id, user.id)


@router.patch(
    "/images/{image_id}",
    operation_id="update_image",
    response_model=ImageItem,
    responses=responses(404, 422),
)
async def update_image(
    image_id: UUID, body: ImageUpdate, user: CurrentUser, conn: Conn, svc: Svc
) -> ImageItem:
    """Make one of the caller's images public or private."""
    return await gallery.set_visibility(
        conn, svc.storage, svc.settings, image_id, user.id, body.visibility
    )


@router.delete(
    "/images/{image_id}",
    operation_id="delete_image",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def delete_image(image_id: UUID, user: CurrentUser, svc: Svc) -> Response:
    """Delete one of the caller's images: the row, its likes and the stored object."""
    await gallery.delete(svc.pool, svc.storage, image_id, user.id)
    return Response(status_code=204)


@router.get(
    "/images/{image_id}/download",
    operation_id="download_image",
    response_model=DownloadLink,
    responses={
        307: {
            "description": "Redirect to a short-lived URL",
            "headers": header_docs(required=True, Location="The short-lived URL"),
        },
        **responses(404, 422),
    },
    openapi_extra={"security": [{}]},  # a public image needs no token
)
async def download_image(
    image_id: UUID,
    user: OptionalUser,
    conn: Conn,
    svc: Svc,
    redirect: Annotated[bool, Query(description="false: answer the URL as JSON")] = True,
) -> Response | DownloadLink:
    """A short-lived URL of the image (own or public). Public ones need no token; any other
    without a token is a 401."""
    link = await gallery.download(conn, svc.storage, image_id, user.id if user else None)
    if redirect:
        return RedirectResponse(link.url, status_code=307, headers={"Cache-Control": "no-store"})
    return link


@router.put(
    "/images/{image_id}/like",
    operation_id="like_image",
    response_model=LikeState,
    responses=responses(404, 422),
)
async def like_image(image_id: UUID, user: CurrentUser, conn: Conn) -> LikeState:
    """Like an image (own or public); liking twice counts once."""
    return await gallery.like(conn, image_id, user.id, on=True)


@router.delete(
    "/images/{image_id}/like",
    operation_id="unlike_image",
    response_model=LikeState,
    responses=responses(404, 422),
)
async def unlike_image(image_id: UUID, user: CurrentUser, conn: Conn) -> LikeState:
    """Take a like back; unliking twice changes nothing."""
    return await gallery.like(conn, image_id, user.id, on=False)
