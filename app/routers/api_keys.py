"""API keys for servers: made, listed and revoked by a signed-in person, never by a key."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Depends, Response

from app.deps import Conn, CurrentUser, Svc, session_only
from app.errors import ANY_OPERATION, responses
from app.schemas.api_keys import ApiKeyCreate, ApiKeyCreated, ApiKeyList
from app.services import api_keys

router = APIRouter(
    prefix="/v1/api-keys",
    tags=["api-keys"],
    dependencies=[Depends(session_only)],
    responses=responses(*ANY_OPERATION, 401, 403, 503),
)


@router.post(
    "",
    operation_id="create_api_key",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=responses(422),
)
async def create_api_key(body: ApiKeyCreate, user: CurrentUser, conn: Conn) -> ApiKeyCreated:
    """Make a key for a server: send it as `Authorization: Bearer atl_…`; it acts as you and
    spends your credits. `key` is shown in this answer only. 403 when called with a key."""
    return await api_keys.create(conn, user, body.name)


@router.get("", operation_id="list_api_keys", response_model=ApiKeyList)
async def list_api_keys(user: CurrentUser, conn: Conn) -> ApiKeyList:
    """The caller's keys, newest first (without the keys themselves)."""
    return ApiKeyList(items=await api_keys.list_keys(conn, user))


@router.delete(
    "/{key_id}",
    operation_id="delete_api_key",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def delete_api_key(key_id: UUID, user: CurrentUser, conn: Conn, svc: Svc) -> Response:
    """Revoke a key: refused here at once, and everywhere within a few seconds."""
    await api_keys.revoke(conn, svc.api_keys, user, key_id)
    return Response(status_code=204)
