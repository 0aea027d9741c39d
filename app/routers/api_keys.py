"""API keys for servers: made, listed and revoked by a signed-in person, never by a key."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Depends, Response

from app.deps import Conn, CurrentUser, JsonBodyRoute, Svc, session_only
from app.openapi import ANY_OPERATION, header_docs, responses
from app.schemas.api_keys import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyList
from app.services import api_keys

router = APIRouter(
    prefix="/v1/api-keys",
    tags=["api-keys"],
    dependencies=[Depends(session_only)],
    responses=responses(*ANY_OPERATION, 401, 403, 503),
    route_class=JsonBodyRoute,
)


@router.post(
    "",
    operation_id="create_api_key",
    status_code=201,
    response_model=ApiKeyCreated,
    responses={
        201: {"headers": header_docs(required=True, Location="The key: `/v1/api-keys/{id}`")},
        **responses(409, 422),
    },
)
async def create_api_key(
    body: ApiKeyCreate, user: CurrentUser, conn: Conn, svc: Svc, response: Response
) -> ApiKeyCreated:
    """Make a key for a server: send it as `Authorization: Bearer atl_…`; it acts as you and
    spends your credits. `key` is shown in this answer only. 403 when called with a key.
    409: the caller has `API_KEYS_MAX` keys already (20; `limit` says it)."""
    created = await api_keys.create(conn, svc.settings, user, body.name)
    response.headers["Location"] = f"/v1/api-keys/{created.id}"
    return created


@router.get("", operation_id="list_api_keys", response_model=ApiKeyList)
async def list_api_keys(user: CurrentUser, conn: Conn) -> ApiKeyList:
    """The caller's keys, newest first (without the keys themselves)."""
    return ApiKeyList(items=await api_keys.list_keys(conn, user))


@router.get(
    "/{key_id}", operation_id="get_api_key", response_model=ApiKey, responses=responses(404, 422)
)
async def get_api_key(key_id: UUID, user: CurrentUser, conn: Conn) -> ApiKey:
    """One of the caller's keys (without the key itself)."""
    return await api_keys.get(conn, user, key_id)


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
