from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Query
from pydantic import AfterValidator, BaseModel, Field


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. "\ud800" in JSON: not storable text
        raise ValueError("must be valid Unicode text") from None
    return value


# White space as Python's str.isspace and JavaScript's \s see it (the union), and what shows
# nothing on its own: soft hyphen, combining grapheme joiner, Arabic letter mark, Hangul
# fillers, Mongolian free variation selectors and vowel separator, zero-width space and
# joiners, direction marks, embeddings, overrides and isolates, word joiner and invisible
# operators, blank Braille pattern, variation selectors. Spelled so that the validator and
# the document's pattern (ECMA-262, as JSON Schema reads it, with no `u` flag: so the Basic
# Multilingual Plane only, not the supplementary variation selectors or tags) agree. Text
# made only of these is blank.
BLANK = (
    r"\t\n\x0b\x0c\r \x1c-\x1f\x85\xa0\xad\u034f\u061c\u115f\u1160\u1680\u180b-\u180f"
    r"\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u2069\u2800\u3000\u3164\ufe00-\ufe0f"
    r"\ufeff\uffa0"
)
_BLANK = re.compile(f"[{BLANK}]*")


def _not_blank(value: str) -> str:
    if _BLANK.fullmatch(value):
        raise ValueError("must not be blank")
    return value


# Text that PostgreSQL can store: no NUL, no lone surrogates (JSON text holds none but as an
# escape, which the document cannot spell). The patterns only describe the validators, whose
# messages stay what they were.
SafeStr = Annotated[
    str, AfterValidator(_no_nul), Field(json_schema_extra={"pattern": r"^[^\x00]*$"})
]
# The same, with something in it besides white space.
TextStr = Annotated[
    str,
    AfterValidator(_no_nul),
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": rf"^[^\x00]*[^\x00{BLANK}][^\x00]*$"}),
]

# What a one-line name may not hold: control characters (C0, DEL, C1: a newline, a bell), the
# line and paragraph separators, and the direction embeddings, overrides and isolates
# ("\u202etxt.exe" shows as "exe.txt").
CONTROLS = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{CONTROLS}]")


def _one_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must be one line of text without control characters")
    return value


# A name of the service's own (an API key's): one line, with something in it. Taken as sent
# (not trimmed: the document's length limits then mean what the server checks).
LineStr = Annotated[
    str,
    AfterValidator(_no_nul),
    AfterValidator(_one_line),
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": rf"^[^{CONTROLS}]*[^{CONTROLS}{BLANK}][^{CONTROLS}]*$"}),
]


def never_null(schema: dict[str, Any]) -> None:
    """`json_schema_extra` of a field typed `X | None` that may be left out but not sent as
    null (its service answers null with a 422): the document offers neither null nor its
    `default: null`. Typed `X | SkipJsonSchema[None]` instead, the union made pydantic
    report a wrong value twice, once under its validators' internal names and once as
    "Input should be None"."""
    schema.pop("default", None)
    members = schema.pop("anyOf", [])
    kept = [member for member in members if member != {"type": "null"}]
    if len(kept) == 1:
        schema.update({**kept[0], **schema})  # the field's own title and description stay
    elif kept:
        schema["anyOf"] = kept


Limit = Annotated[int, Field(ge=1, le=100, description="How many items a page holds.")]
# Described, not validated here: a cursor too long or of other characters is one this API
# never handed out, a 400 from pagination.decode like every other foreign cursor (not a 422
# about a string's length). The pattern is pagination.CURSOR_PATTERN's (empty: no cursor).
Cursor = Annotated[
    str | None,
    Query(
        description="From `next_cursor` (base64url, at most 300 characters).",
        json_schema_extra={"pattern": "^[A-Za-z0-9_-]{0,300}$"},
    ),
]


class Page(BaseModel):
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )
