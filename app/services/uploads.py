"""Uploads: images a user sends to style or edit, checked by content and stored clean."""

from __future__ import annotations

import uuid

from starlette.datastructures import UploadFile

from app.config import Settings
from app.core.messages import byte_size
from app.errors import PayloadTooLarge, ServiceUnavailable, Unprocessable, UnsupportedMediaType
from app.schemas.generations import Upload
from app.services import imaging
from app.services.storage.base import Storage, StorageError, upload_prefix
from app.services.users import User

_CHUNK = 256 * 1024


def not_an_accepted_image() -> UnsupportedMediaType:
    """The 415 of a file that is no PNG, JPEG or WEBP (by its bytes; its declared type and
    name are not asked). A PNG, JPEG or WEBP that does not decode is a 422 instead."""
    return UnsupportedMediaType(
        "Only PNG, JPEG and WEBP images are accepted (judged by content).",
        list(imaging.MIME_BY_FORMAT.values()),
        request_type=False,
    )


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    """Read at most `limit` bytes; more is a 413 before anything else is read."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"Uploads may be at most {byte_size(limit)}, MAX_UPLOAD_BYTES.", limit=limit
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def store(
    settings: Settings,
    storage: Storage,
    decoders: imaging.Decoders,
    user: User,
    file: UploadFile,
) -> Upload:
    data = await _read_limited(file, settings.max_upload_bytes)
    if not data:
        raise Unprocessable("The file is empty.")
    if imaging.sniff(data) is None:
        raise not_an_accepted_image()
    try:
        clean = await decoders.run(
            imaging.clean_upload, data, settings.max_upload_pixels, settings.max_upload_side
        )
    except imaging.TooManyPixels as exc:
        raise Unprocessable(
            f"The image is too large ({exc}); uploads may have at most "
            f"{settings.max_upload_side} pixels on a side and {settings.max_upload_pixels} "
            "pixels in all.",
            max_pixels=settings.max_upload_pixels,
            max_side=settings.max_upload_side,
        ) from exc
    except imaging.NotAnImage as exc:
        raise Unprocessable(f"The file is not a usable image: {exc}.") from exc
    key = f"{upload_prefix(user.id)}{uuid.uuid4().hex}.{clean.extension}"
    try:
        await storage.put(key, clean.data, clean.mime_type)
    except StorageError as exc:
        raise ServiceUnavailable("Storage is unavailable; try again shortly.") from exc
    return Upload(
        upload_key=key,
        content_type=clean.mime_type,
        width=clean.width,
        height=clean.height,
        size=len(clean.data),
    )
