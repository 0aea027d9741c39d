"""The server-sent events of the job and feed streams, as the OpenAPI document describes them.

On the wire each is `event: <name>`, `id: <id>` (when it has one) and `data: <JSON text>`;
these models give `data` parsed, so a typed client knows what each event carries.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.gallery import ImageItem
from app.schemas.generations import Job


class JobEvent(BaseModel):
    """The job as it is now: sent first, then at every change, the last once it has ended."""

    event: Literal["job"]
    id: str = Field(description="The job's progress (0 to 100).", pattern=r"^[0-9]{1,3}$")
    data: Job


class FeedReadyData(BaseModel):
    user_id: str


class FeedReady(BaseModel):
    """Subscribed: what is published from now on arrives."""

    event: Literal["ready"]
    id: str = Field(description="Send it back as `Last-Event-ID` when reconnecting.")
    data: FeedReadyData


class FeedImage(BaseModel):
    """A new public image, as a feed item."""

    event: Literal["image"]
    id: UUID = Field(description="The image's id.")
    data: ImageItem


class LikesChanged(BaseModel):
    id: UUID
    likes_count: int = Field(ge=0)


class FeedLikes(BaseModel):
    """An image's like count changed."""

    event: Literal["likes"]
    data: LikesChanged


class ImageRemoved(BaseModel):
    id: UUID


class FeedRemoved(BaseModel):
    """A public image was deleted or made private: drop it from the list."""

    event: Literal["removed"]
    data: ImageRemoved


class Resync(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeedResync(BaseModel):
    """Events were missed (or this is a reconnect): fetch `/v1/feed` again."""

    event: Literal["resync"]
    data: Resync


FEED_EVENTS: tuple[type[BaseModel], ...] = (
    FeedReady,
    FeedImage,
    FeedLikes,
    FeedRemoved,
    FeedResync,
)
JOB_EVENTS: tuple[type[BaseModel], ...] = (JobEvent,)
