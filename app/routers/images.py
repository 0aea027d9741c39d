"""The gallery: the caller's images, one image, likes, downloads, and the public feed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID, uuid4

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import RedirectResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.deps import Conn, CurrentUser, OptionalUser, StreamUser, Svc
from app.errors import responses
from app.openapi import sse_events
from app.schemas.common import Cursor, Limit
from app.schemas.events import FEED_EVENTS, FeedReadyData, ImageRemoved, LikesChanged, Resync
from app.schemas.gallery import DownloadLink, ImageItem, ImagePage, ImageUpdate, LikeState
from app.services import gallery
from app.services.realtime import FEED_CHANNEL, RESYNC

router = APIRouter(prefix="/v1", tags=["gallery"], responses=responses(401, 503))


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
    user: CurrentUser, conn: Conn, svc: Svc, cursor: Cursor = None, limit: Limit = 20
) -> ImagePage:
    """Public images from everyone, newest first, with like counts."""
    return await gallery.listing(
        conn,
        svc.storage,
        svc.settings,
        viewer=user.id,
        mine=False,
        pack_id=None,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/feed/events",
    operation_id="stream_feed_events",
    response_class=EventSourceResponse,
    responses={200: sse_events("The feed's events, until the client leaves", *FEED_EVENTS)},
)
async def stream_feed_events(
    user: StreamUser,
    svc: Svc,
    last_event_id: Annotated[str | None, Header(max_length=200)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: `ready` (subscribed), `image` (a new public image, as a feed
    item), `likes` ({id, likes_count}), `removed` ({id}: a public image was deleted or made
    private) and `resync` (events were missed: fetch /v1/feed again). A reconnect that sends
    `Last-Event-ID` gets `resync` right after `ready`: what happened while it was away is
    not replayed."""
    async with svc.hub.subscribe(FEED_CHANNEL) as sub:
        # An id on `ready` too: a client that reconnects after seeing only `likes` or
        # `removed` (which carry none) still sends Last-Event-ID, and so learns to resync.
        # The payloads are the document's models, sent as dicts (json.dumps' spacing, as ever).
        ready = FeedReadyData(user_id=user.id).model_dump(mode="json")
        yield ServerSentEvent(event="ready", data=ready, id=f"ready-{uuid4()}")
        if last_event_id is not None:
            yield ServerSentEvent(event="resync", data=Resync().model_dump())
        while True:
            event = await sub.get(30)
            if event is None:
                continue
            if event is RESYNC:
                yield ServerSentEvent(event="resync", data=Resync().model_dump())
            elif event.get("type") == "likes":
                likes = LikesChanged(id=event["id"], likes_count=event["likes_count"])
                yield ServerSentEvent(event="likes", data=likes.model_dump(mode="json"))
            elif event.get("type") == "removed":
                removed = ImageRemoved(id=event["id"]).model_dump(mode="json")
                yield ServerSentEvent(event="removed", data=removed)
            elif event.get("type") == "image":
                item = await gallery.announced_item(
                    svc.pool, svc.storage, svc.settings, event, user.id
                )
                if item is not None:
                    yield ServerSentEvent(event="image", data=item, id=str(item.id))


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
async def delete_image(image_id: UUID, user: CurrentUser, conn: Conn, svc: Svc) -> Response:
    """Delete one of the caller's images: the row, its likes and the stored object."""
    await gallery.delete(conn, svc.storage, image_id, user.id)
    return Response(status_code=204)


@router.get(
    "/images/{image_id}/download",
    operation_id="download_image",
    response_model=DownloadLink,
    responses={307: {"description": "Redirect to a short-lived URL"}, **responses(404, 422)},
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
