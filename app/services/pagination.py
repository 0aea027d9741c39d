"""Opaque keyset cursors: the position of the last item of a page, base64url JSON.

A cursor names a place in an order (never an offset), so items arriving between two page
requests neither repeat nor push older items out of the next page.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from app.errors import BadRequest

_BAD = "The cursor is not one this API handed out."
MAX_CURSOR_LENGTH = 300  # the longest this API hands out is under 100 characters
CURSOR_PATTERN = re.compile(f"^[A-Za-z0-9_-]{{1,{MAX_CURSOR_LENGTH}}}$")


def encode(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> dict[str, Any]:
    # base64url without padding, as `encode` writes it (the OpenAPI document says the same);
    # the decoder would skip other characters rather than refuse them.
    if not CURSOR_PATTERN.fullmatch(cursor):
        raise BadRequest(_BAD)
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise BadRequest(_BAD) from exc
    if not isinstance(payload, dict):
        raise BadRequest(_BAD)
    return payload


def encode_id(last_id: int) -> str:
    return encode({"id": last_id})


def decode_id(cursor: str) -> int:
    value = decode(cursor).get("id")
    # ids are positive bigints; anything else would reach the database and fail there
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise BadRequest(_BAD)
    return value


def encode_time_id(created_at: datetime, item_id: UUID) -> str:
    return encode({"t": created_at.isoformat(), "id": str(item_id)})


def decode_time_id(cursor: str) -> tuple[datetime, UUID]:
    payload = decode(cursor)
    try:
        created_at = datetime.fromisoformat(str(payload["t"]))
        item_id = UUID(str(payload["id"]))
    except (KeyError, ValueError) as exc:
        raise BadRequest(_BAD) from exc
    if created_at.tzinfo is None:
        raise BadRequest(_BAD)
    try:  # in UTC it must still be a datetime; the database compares it in UTC
        created_at = created_at.astimezone(UTC)
    except OverflowError as exc:
        raise BadRequest(_BAD) from exc
    return created_at, item_id


def split_time_id(rows: Sequence[Any], limit: int) -> tuple[Sequence[Any], str | None]:
    """A page from `limit + 1` rows ordered by (created_at, id) descending: the first `limit`
    rows, and the cursor of the next page (None when that extra row was not there)."""
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_time_id(last["created_at"], last["id"])
