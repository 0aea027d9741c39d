"""Serve the signed, expiring URLs of local storage (STORAGE=local); R2 serves its own."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.errors import Forbidden, NotFound, ServiceUnavailable, responses
from app.services.storage.base import ObjectNotFound, StorageError, validate_key
from app.services.storage.local import CONTENT_TYPES, LocalStorage, content_type_for

router = APIRouter(tags=["files"])
log = logging.getLogger("atelier.files")

_IMAGE_CONTENT: dict[str, dict[str, object]] = {
    media_type: {"schema": {"type": "string", "format": "binary"}}
    for media_type in sorted(set(CONTENT_TYPES.values()))
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
    storage: LocalStorage | None = getattr(request.app.state, "local_storage", None)
    if storage is None:
        raise NotFound("Files are not served here (objects live in R2).")
    try:
        validate_key(key)
    except ValueError:
        raise NotFound("No such file.") from None
    if not storage.signature_matches(key, exp, sig):
        raise Forbidden("This link's signature is not valid.")
    remaining = exp - int(time.time())
    if remaining <= 0:
        raise Forbidden("This link has expired.")
    try:
        data = await storage.get(key)
    except ValueError:
        # A valid key whose file resolves outside the root (a symlink): never served.
        log.warning("refused object %r: it leads outside the storage root", key)
        raise NotFound("No such file.") from None
    except ObjectNotFound:
        raise NotFound("No such file.") from None
    except StorageError as exc:
        log.warning("could not read object %r: %s", key, exc)
        raise ServiceUnavailable("The file store is unavailable; retry later.") from exc
    return Response(
        data,
        media_type=content_type_for(key),
        headers={
            "Cache-Control": f"private, max-age={remaining}",
            "X-Content-Type-Options": "nosniff",
        },
    )
