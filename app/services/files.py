"""Local storage's signed, expiring links (STORAGE=local): check one, then read its object.

R2 serves its own links; with local storage the app does, through `app/routers/files.py`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from app.errors import Forbidden, NotFound, ServiceUnavailable
from app.services.storage.base import ObjectNotFound, SignedStorage, StorageError, validate_key

log = logging.getLogger("atelier.files")

CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}


def content_type_for(key: str) -> str:
    """The media type to serve a key with, from its extension."""
    return CONTENT_TYPES.get(Path(key).suffix.lower(), "application/octet-stream")


@dataclass(frozen=True)
class SignedFile:
    data: bytes
    media_type: str
    seconds_left: int  # until the link expires: how long a client may keep the bytes


async def open_signed(storage: SignedStorage | None, key: str, exp: int, sig: str) -> SignedFile:
    """The object behind a link `storage` signed, if the signature holds and `exp` is ahead.

    `storage` is None when objects live elsewhere (R2): then no link is served here. A key
    that is not valid, or whose file leads outside the storage root, is not found.
    """
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
    return SignedFile(data, content_type_for(key), remaining)
