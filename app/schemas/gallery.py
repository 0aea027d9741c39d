from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from app.schemas.common import Page, SafeStr, TextStr, without_default

Visibility = Literal["private", "public"]


def _http_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    return value


HttpUrl = Annotated[
    SafeStr,
    AfterValidator(_http_url),
    Field(max_length=2048, json_schema_extra={"pattern": r"^https?://[^\x00]*$"}),
]


class ImageItem(BaseModel):
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
    items: list[ImageItem]


class ImageUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visibility: Visibility


class LikeState(BaseModel):
    liked: bool
    likes_count: int


class DownloadLink(BaseModel):
    url: str
    expires_in: int = Field(description="Seconds the URL stays valid.")


# A saved prompt's text keeps the mobile app's column name; a generation calls it `prompt`.
PROMPT_TEXT = (
    "The saved prompt's text (the mobile app's `custom_prompts.prompt_text`); send it as a "
    "generation's `prompt`."
)


class PromptCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_text: Annotated[TextStr, Field(min_length=1, max_length=2000)] = Field(
        description=PROMPT_TEXT
    )
    title: Annotated[SafeStr, Field(min_length=1, max_length=200)] | None = None
    thumbnail_url: HttpUrl | None = None
    secondary_image_url: HttpUrl | None = None


class PromptUpdate(BaseModel):
    """Only the fields sent change; send null to clear an optional one."""

    model_config = ConfigDict(extra="forbid")
    # null is refused (422) by the service: the document does not offer it
    prompt_text: Annotated[TextStr, Field(min_length=1, max_length=2000)] | SkipJsonSchema[None] = (
        Field(default=None, json_schema_extra=without_default, description=PROMPT_TEXT)
    )
    title: Annotated[SafeStr, Field(min_length=1, max_length=200)] | None = None
    thumbnail_url: HttpUrl | None = None
    secondary_image_url: HttpUrl | None = None


class Prompt(BaseModel):
    id: UUID
    title: str | None
    prompt_text: str = Field(description=PROMPT_TEXT)
    thumbnail_url: str | None
    secondary_image_url: str | None
    created_at: datetime


class PromptPage(Page):
    items: list[Prompt]


class PackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[TextStr, Field(min_length=1, max_length=100)]
    style_prompt: Annotated[SafeStr, Field(max_length=1000)] | None = Field(
        default=None, description="Sent with every generation into the pack, to keep its look."
    )


class PackUpdate(BaseModel):
    """Only the fields sent change; send null to clear style_prompt or cover_image_id."""

    model_config = ConfigDict(extra="forbid")
    # null is refused (422) by the service: the document does not offer it
    name: Annotated[TextStr, Field(min_length=1, max_length=100)] | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=without_default
    )
    style_prompt: Annotated[SafeStr, Field(max_length=1000)] | None = None
    cover_image_id: UUID | None = None


class Pack(BaseModel):
    id: UUID
    name: str
    style_prompt: str | None
    cover_image_id: UUID | None
    icon_count: int
    created_at: datetime
    updated_at: datetime


class PackDetail(Pack):
    icons: list[ImageItem] = Field(description="The newest icons (up to `icons_limit`).")
    icons_next_cursor: str | None = Field(
        description="Page on with GET /v1/images?pack_id=…&cursor=…"
    )


class PackPage(Page):
    items: list[Pack]


class PackIconAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: UUID
