"""The server-sent events of the job and feed streams, as the OpenAPI document describes them.

On the wire each is `event: <name>`, `id: <id>` (when it has one) and `data: <JSON text>`;
these models give `data` parsed, so a typed client knows what each event carries.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.gallery import IMAGE_ITEM_EXAMPLE, ImageItem
from app.schemas.generations import IMAGE_ID_EXAMPLE, JOB_EXAMPLE, PENDING_JOB_EXAMPLE, Job

# Each event model's examples give `data` parsed, as the models do; app.openapi writes them
# as the JSON text the stream carries, and strings them together into the stream's example.


class JobEvent(BaseModel):
    """The job as it is now: sent first, then at every change, the last once it has ended."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"event": "job", "id": "0", "data": PENDING_JOB_EXAMPLE},
                {
                    "event": "job",
                    "id": "60",
                    "data": {**PENDING_JOB_EXAMPLE, "status": "running", "progress": 60},
                },
                {"event": "job", "id": "100", "data": JOB_EXAMPLE},
            ]
        }
    )

    event: Literal["job"]
    id: str = Field(description="The job's progress (0 to 100).", pattern=r"^[0-9]{1,3}$")
    data: Job


class FeedReadyData(BaseModel):
    user_id: str


class FeedReady(BaseModel):
    """Subscribed: what is published from now on arrives."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event": "ready",
                    "id": "ready-0f2d4b6a-8c1e-4a3b-9d5f-7e9a1c3b5d7f",
                    "data": {"user_id": "user_2abcDEF"},
                }
            ]
        }
    )

    event: Literal["ready"]
    id: str = Field(description="Send it back as `Last-Event-ID` when reconnecting.")
    data: FeedReadyData


class FeedImage(BaseModel):
    """A new public image, as a feed item."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event": "image",
                    "id": IMAGE_ID_EXAMPLE,
                    "data": {**IMAGE_ITEM_EXAMPLE, "likes_count": 0, "mine": False},
                }
            ]
        }
    )

    event: Literal["image"]
    id: UUID = Field(description="The image's id.")
    data: ImageItem


class LikesChanged(BaseModel):
    id: UUID
    likes_count: int = Field(ge=0)


class FeedLikes(BaseModel):
    """An image's like count changed."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"event": "likes", "data": {"id": IMAGE_ID_EXAMPLE, "likes_count": 1}}]
        }
    )

    event: Literal["likes"]
    data: LikesChanged


class ImageRemoved(BaseModel):
    id: UUID


class FeedRemoved(BaseModel):
    """A public image was deleted or made private: drop it from the list."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"event": "removed", "data": {"id": IMAGE_ID_EXAMPLE}}]}
    )

    event: Literal["removed"]
    data: ImageRemoved


class Resync(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeedResync(BaseModel):
    """Events were missed (or this is a reconnect): fetch `/v1/feed` again."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"event": "resync", "data": {}}]})

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
