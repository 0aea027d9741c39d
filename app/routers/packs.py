"""Icon packs and their icons."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response

from app.deps import Conn, CurrentUser, Svc
from app.errors import responses
from app.openapi import header_docs
from app.schemas.common import Cursor, Limit
from app.schemas.gallery import Pack, PackCreate, PackDetail, PackIconAdd, PackPage, PackUpdate
from app.services import packs

router = APIRouter(prefix="/v1/packs", tags=["packs"], responses=responses(401, 503))
IconsLimit = Annotated[int, Query(ge=1, le=100, description="How many icons to include.")]


@router.get("", operation_id="list_packs", response_model=PackPage, responses=responses(400, 422))
async def list_packs(
    user: CurrentUser,
    conn: Conn,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> PackPage:
    """The caller's packs, newest first."""
    return await packs.listing(conn, user.id, cursor, limit)


@router.post(
    "",
    operation_id="create_pack",
    status_code=201,
    response_model=Pack,
    responses={201: {"headers": header_docs(Location="The pack")}, **responses(422)},
)
async def create_pack(body: PackCreate, user: CurrentUser, conn: Conn, response: Response) -> Pack:
    """Start a pack; its style prompt goes with every generation into it."""
    pack = await packs.create(conn, user.id, body)
    response.headers["Location"] = f"/v1/packs/{pack.id}"
    return pack


@router.get(
    "/{pack_id}", operation_id="get_pack", response_model=PackDetail, responses=responses(404, 422)
)
async def get_pack(
    pack_id: UUID, user: CurrentUser, conn: Conn, svc: Svc, icons_limit: IconsLimit = 50
) -> PackDetail:
    """One of the caller's packs, with its newest icons."""
    return await packs.detail(conn, svc.storage, svc.settings, pack_id, user.id, icons_limit)


@router.patch(
    "/{pack_id}", operation_id="update_pack", response_model=Pack, responses=responses(404, 422)
)
async def update_pack(pack_id: UUID, body: PackUpdate, user: CurrentUser, conn: Conn) -> Pack:
    """Rename it, change its style prompt or its cover (one of the caller's images)."""
    return await packs.update(conn, pack_id, user.id, body)


@router.delete(
    "/{pack_id}",
    operation_id="delete_pack",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def delete_pack(pack_id: UUID, user: CurrentUser, conn: Conn) -> Response:
    """Delete the pack; its icons stay in the caller's gallery."""
    await packs.delete(conn, pack_id, user.id)
    return Response(status_code=204)


@router.post(
    "/{pack_id}/icons",
    operation_id="add_pack_icon",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def add_pack_icon(
    pack_id: UUID, body: PackIconAdd, user: CurrentUser, conn: Conn
) -> Response:
    """File one of the caller's images into the pack."""
    await packs.add_icon(conn, pack_id, user.id, body.image_id)
    return Response(status_code=204)


@router.delete(
    "/{pack_id}/icons/{image_id}",
    operation_id="remove_pack_icon",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def remove_pack_icon(
    pack_id: UUID, image_id: UUID, user: CurrentUser, conn: Conn
) -> Response:
    """Take an icon out of the pack (it stays in the gallery)."""
    await packs.remove_icon(conn, pack_id, user.id, image_id)
    return Response(status_code=204)
