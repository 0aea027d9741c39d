"""What an error says, in the terms of the person who sent the request.

Pydantic describes a too-long prompt as "Value should have at most 2000 items after
validation, not 3000" (its `too_long` error, raised for text that went through a validator);
these helpers say "at most 2,000 characters (got 3,000)" instead, and name byte limits both
as configured and in a unit a person reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def byte_size(count: int) -> str:
    """`1048576 bytes (1 MiB)`: exact, as the setting is written, and in a unit a person
    reads."""
    exact = f"{count} byte{'s' if count != 1 else ''}"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            amount = count / size
            shown = f"{amount:.0f}" if amount == int(amount) else f"{amount:.1f}"
            return f"{exact} ({shown} {unit})"
    return exact


_SINGULAR = {"characters": "character", "entries": "entry", "items": "item"}


def _length_message(bound: str, limit: int, actual: int | None, unit: str) -> str:
    plural = unit if limit != 1 else _SINGULAR.get(unit, unit)
    got = f" (got {actual:,})" if actual is not None else ""
    return f"at {bound} {limit:,} {plural}{got}"


def _measured(value: Any) -> tuple[str, int | None]:
    """What the value's length counts ("characters" for text) and that length."""
    if isinstance(value, str):
        return "characters", len(value)
    if isinstance(value, Mapping):
        return "entries", len(value)
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, bytes):
        return "items", len(value)
    return "items", None


def validation_message(error: Mapping[str, Any]) -> str:
    """One pydantic error's message, with lengths in characters for text, not "items"."""
    kind = error.get("type")
    ctx = error.get("ctx") or {}
    message = str(error.get("msg", "invalid"))
    if kind in ("too_long", "string_too_long") and "max_length" in ctx:
        unit, actual = _measured(error.get("input"))
        return _length_message("most", int(ctx["max_length"]), actual, unit)
    if kind in ("too_short", "string_too_short") and "min_length" in ctx:
        unit, actual = _measured(error.get("input"))
        if int(ctx["min_length"]) == 1:
            return "must not be empty"
        return _length_message("least", int(ctx["min_length"]), actual, unit)
    if kind == "value_error" and message.startswith("Value error, "):
        return message.removeprefix("Value error, ")  # our own validators' words
    return message


def field_name(loc: Sequence[Any]) -> str:
    """Where the error is, as the sender named it: `prompt` or `reference.upload_key` for
    the body, `limit (query parameter)` for the rest."""
    parts = [str(part) for part in loc]
    if not parts:
        return "request"
    where, path = parts[0], ".".join(parts[1:])
    if where == "body":
        return path or "body"
    if where in ("query", "path", "header", "cookie") and path:
        return f"{path} ({where} parameter)"
    return ".".join(parts)


def missing_file_part(name: str) -> str:
    """The message of a multipart body without its file part `name`."""
    return f"Field required: send the image as a multipart/form-data part '{name}'"


# Starts the tag of a member of a discriminated union (schemas.generations.Reference): a tag
# is no place in a request, so errors leave it out of `loc` (field and header names cannot
# hold a ":").
TAG_PREFIX = "tag:"


def unparsable_body(cause: BaseException | None) -> str | None:
    """What to say about a body FastAPI could not parse (it answers a bare 400 "There was an
    error parsing the body" for anything but a JSON syntax error), from what it raised."""
    if isinstance(cause, RecursionError):
        return "The JSON body is nested too deeply to parse."
    if isinstance(cause, UnicodeDecodeError):
        return "The body is not valid UTF-8 text, so it cannot be JSON."
    if cause is not None:
        return "The body could not be parsed."
    return None


def json_invalid(error: json.JSONDecodeError) -> dict[str, Any]:
    """A JSON syntax error as the validation error FastAPI makes of it (`json_invalid`)."""
    return {
        "type": "json_invalid",
        "loc": ("body", error.pos),
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": error.msg},
    }


def json_body_types(method: str) -> list[str]:
    """The media types an operation takes its JSON body in: a PATCH's also as a JSON Merge
    Patch (RFC 7396), which means the same. Its 415 (`errors`) and its document say so."""
    takes = ["application/json"]
    return takes + ["application/merge-patch+json"] if method.upper() == "PATCH" else takes
