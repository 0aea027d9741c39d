"""Serve the signed, expiring URLs of local storage (STORAGE=local); R2 serves its own."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.openapi import ANY_OPERATION, responses
from app.services import files
from app.services.storage.base import SignedStorage

router = APIRouter(tags=["files"], responses=responses(*ANY_OPERATION))

_IMAGE_CONTENT: dict[str, dict[str, object]] = {
    media_type: {"schema": {"type": "string", "format": "binary"}}
    for media_type in sorted(set(files.CONTENT_TYPES.values()))
}


@router.get(
    "/files/{key:path}",
    operation_id="get_file",
    response_class=Response,
    include_in_schema=True,
    responses={
        200: {"description": "The stored object", "content": _IMAGE_CONTENT},
        **responses(403, 404, 422, 503),
    },
)
async def get_file(
    request: Request,
    key: str,
    exp: Annotated[int, Query(description="Expiry, in Unix seconds, as signed.")],
    sig: Annotated[str, Query(max_length=128, description="HMAC-SHA256 of key and exp.")],
) -> Response:
    """A stored object, through a link the service signed (GET it before `exp`)."""
    # Set by the lifespan: the store when it is local (its links are served here), else None.
    storage: SignedStorage | None = getattr(request.app.state, "local_storage", None)
    found = await files.open_signed(storage, key, exp, sig)
    return Response(
        found.data,
        media_type=found.media_type,
        headers={
            "Cache-Control": f"private, max-age={found.seconds_left}",
            "X-Content-Type-Options": "nosniff",
        },
    )
