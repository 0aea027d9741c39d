from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.schemas.common import BLANK, Page, SafeStr, TextStr, never_null
from app.schemas.generations import IMAGE_ID_EXAMPLE, SIGNED_URL_EXAMPLE

Visibility = Literal["private", "public"]


# An http(s) URL with a host: optional user info, a host (a name, IDNs included, or an
# address: brackets hold an IPv6 one), an optional port up to 65535, then anything but NUL
# (taken as sent, never normalised: the mobile app reads the column). Neither user info nor
# host holds control characters or white space of any kind, and a host none of `%<>\^|` and
# the delimiters (the WHATWG URL standard's forbidden domain code points). Spelled so that
# the validator and the document's pattern (ECMA-262) agree.
_UNSEEN = rf"\x00-\x20\x7f-\x9f{BLANK}"
_USER = rf"(?:[^{_UNSEEN}/?#@\\]*@)?"
_HOST = rf"(?:[^{_UNSEEN}#%/:<>?@\[\\\]^|]+|\[[0-9A-Fa-f:.]+\])"
_PORT = r"(?::(?:[0-5]?[0-9]{1,4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
_HTTP_URL = rf"https?://{_USER}{_HOST}{_PORT}(?:[/?#][^\x00]*)?"
_HTTP_URL_MATCH = re.compile(_HTTP_URL)


def _http_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    if not _HTTP_URL_MATCH.fullmatch(value):
        raise ValueError("must be an http(s) URL with a valid host (and port)")
    return value


HttpUrl = Annotated[
    SafeStr,
    AfterValidator(_http_url),
    Field(
        max_length=2048,
        json_schema_extra={"pattern": f"^{_HTTP_URL}$"},
        description="Kept as sent. An image URL this API hands out is signed and expires "
        "(SIGNED_URL_TTL_SECONDS); for one that lasts, send the image's "
        "`/v1/images/{id}/download`, which redirects to a fresh one (without a token for a "
        "public image).",
    ),
]


PACK_ID_EXAMPLE = "c3a1e5d7-2b4f-4a6c-8e0d-1f3b5d7a9c2e"
PROMPT_ID_EXAMPLE = "4e6a8c0b-2d4f-4b6a-9c8e-0a2c4e6b8d1f"
CURSOR_EXAMPLE = (  # pagination.encode_time_id of an item's created_at and id
    "eyJ0IjoiMjAyNi0wNS0wNFQwOToxMjowMyswMDowMCIsImlkIjoi"
    "OGQyZTZmMWEtNDdiMy00YzllLWI1YTAtOWYzZTJkMWMwYjdhIn0"
)
IMAGE_ITEM_EXAMPLE: dict[str, Any] = {
    "id": IMAGE_ID_EXAMPLE,
    "image_url": SIGNED_URL_EXAMPLE,
    "prompt": "a watercolor fox, flat icon",
    "created_at": "2026-05-04T09:12:11.902Z",
    "likes_count": 3,
    "liked_by_me": False,
    "visibility": "public",
    "width": 1024,
    "height": 1024,
    "model": "gemini-3.1-flash-image",
    "pack_id": PACK_ID_EXAMPLE,
    "mine": True,
}
PROMPT_EXAMPLE: dict[str, Any] = {
    "id": PROMPT_ID_EXAMPLE,
    "title": "Fox icons",
    "prompt_text": "a watercolor fox, flat icon, soft pastel background",
    "thumbnail_url": None,
    "secondary_image_url": None,
    "created_at": "2026-05-02T17:40:26.113Z",
}
PACK_EXAMPLE: dict[str, Any] = {
    "id": PACK_ID_EXAMPLE,
    "name": "Forest animals",
    "style_prompt": "flat watercolor icon, soft pastel palette, white background",
    "cover_image_id": IMAGE_ID_EXAMPLE,
    "icon_count": 12,
    "created_at": "2026-05-01T08:03:55.270Z",
    "updated_at": "2026-05-04T09:12:11.902Z",
}


class ImageItem(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [IMAGE_ITEM_EXAMPLE]})

    id: UUID
    image_url: str = Field(
        description="Where to fetch the image (short-lived when signed): the URL a job's "
        "`image.url` carries, named after the mobile app's `generated_images.image_url`."
    )
    prompt: str | None = Field(description="Null for images the mobile app saved without one.")
    created_at: datetime
    likes_count: int
    liked_by_me: bool
    visibility: Visibility
    width: int | None = None
    height: int | None = None
    model: str | None = None
    pack_id: UUID | None = None
    mine: bool = Field(description="Whether the caller owns the image.")


class ImagePage(Page):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [IMAGE_ITEM_EXAMPLE], "next_cursor": CURSOR_EXAMPLE}]
        }
    )

    items: list[ImageItem]


class ImageUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"visibility": "public"}]}
    )
    visibility: Visibility


class LikeState(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"liked": True, "likes_count": 4}]})

    liked: bool
    likes_count: int


class DownloadLink(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"url": SIGNED_URL_EXAMPLE, "expires_in": 300}]}
    )

    url: str
    expires_in: int = Field(description="Seconds the URL stays valid, at least.")


# A saved prompt's text keeps the mobile app's column name; a generation calls it `prompt`.
PROMPT_TEXT = (
    "The saved prompt's text (the mobile app's `custom_prompts.prompt_text`); send it as a "
    "generation's `prompt`."
)


class PromptCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt_text": "a watercolor fox, flat icon, soft pastel background",
                    "title": "Fox icons",
                }
            ]
        },
    )
    prompt_text: Annotated[TextStr, Field(min_length=1, max_length=2000)] = Field(
        description=PROMPT_TEXT
    )
    title: Annotated[TextStr, Field(min_length=1, max_length=200)] | None = None
    thumbnail_url: HttpUrl | None = None
    secondary_image_url: HttpUrl | None = None


class PromptUpdate(BaseModel):
    """Only the fields sent change; send null to clear an optional one."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"title": "Fox icons, pastel"}]}
    )
    # null is refused (422) by the service: the document does not offer it
    prompt_text: Annotated[TextStr, Field(min_length=1, max_length=2000)] | None = Field(
        default=None, json_schema_extra=never_null, description=PROMPT_TEXT
    )
    title: Annotated[TextStr, Field(min_length=1, max_length=200)] | None = None
    thumbnail_url: HttpUrl | None = None
    secondary_image_url: HttpUrl | None = None


class Prompt(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PROMPT_EXAMPLE]})

    id: UUID
    title: str | None
    prompt_text: str = Field(description=PROMPT_TEXT)
    thumbnail_url: str | None
    secondary_image_url: str | None
    created_at: datetime


class PromptPage(Page):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [PROMPT_EXAMPLE], "next_cursor": None}]}
    )

    items: list[Prompt]


class PackCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Forest animals",
                    "style_prompt": "flat watercolor icon, soft pastel palette, white background",
                }
            ]
        },
    )
    name: Annotated[TextStr, Field(min_length=1, max_length=100)]
    style_prompt: Annotated[SafeStr, Field(max_length=1000)] | None = Field(
        default=None, description="Sent with every generation into the pack, to keep its look."
    )


class PackUpdate(BaseModel):
    """Only the fields sent change; send null to clear style_prompt or cover_image_id."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Woodland animals", "cover_image_id": None}]},
    )
    # null is refused (422) by the service: the document does not offer it
    name: Annotated[TextStr, Field(min_length=1, max_length=100)] | None = Field(
        default=None, json_schema_extra=never_null
    )
    style_prompt: Annotated[SafeStr, Field(max_length=1000)] | None = None
    cover_image_id: UUID | None = Field(
        default=None,
        description="Any of the caller's images, in the pack or not (another user's is a 404).",
    )


class Pack(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PACK_EXAMPLE]})

    id: UUID
    name: str
    style_prompt: str | None
    cover_image_id: UUID | None
    icon_count: int
    created_at: datetime
    updated_at: datetime = Field(
        description="Its last change, icons filed in or out (or generated into it) included."
    )


class PackDetail(Pack):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {**PACK_EXAMPLE, "icons": [IMAGE_ITEM_EXAMPLE], "icons_next_cursor": CURSOR_EXAMPLE}
            ]
        }
    )

    icons: list[ImageItem] = Field(description="The newest icons (up to `icons_limit`).")
    icons_next_cursor: str | None = Field(
        description="Page on with GET /v1/images?pack_id=…&cursor=… (your own pack) or "
        "GET /v1/feed?pack_id=…&cursor=… (another user's public pack)"
    )


class PackPage(Page):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [PACK_EXAMPLE], "next_cursor": None}]}
    )

    items: list[Pack]


class PackIconAdd(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"image_id": IMAGE_ID_EXAMPLE}]}
    )
    image_id: UUID
