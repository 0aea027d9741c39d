from __future__ import annotations

from typing import Annotated

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


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# Text that PostgreSQL can store: no NUL, no lone surrogates.
SafeStr = Annotated[str, AfterValidator(_no_nul)]
# The same, with something in it besides white space.
TextStr = Annotated[SafeStr, AfterValidator(_not_blank)]

Limit = Annotated[int, Field(ge=1, le=100, description="How many items a page holds.")]
# No max_length here: a cursor too long is one this API never handed out, a 400 from
# pagination.decode like every other foreign cursor (not a 422 about a string's length).
Cursor = Annotated[str | None, Query(description="From `next_cursor` (at most 300 characters).")]


class Page(BaseModel):
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )
