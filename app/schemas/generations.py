from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import Page, SafeStr, TextStr

JobStatus = Literal["pending", "running", "completed", "failed"]
JobKind = Literal["generate", "style", "edit"]


class UploadReference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upload_key: Annotated[SafeStr, Field(min_length=1, max_length=512)] = Field(
        examples=["uploads/user_2abc/0b7c…e1.png"], description="A key `POST /v1/uploads` returned."
    )


class ImageReference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: UUID = Field(description="One of your images, or a public one.")


class GenerationCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "a watercolor fox, flat icon", "kind": "generate"},
                {
                    "prompt": "make it night time",
                    "kind": "edit",
                    "reference": {"upload_key": "uploads/user_2abc/0b7c.png"},
                },
            ],
            # `style` and `edit` need a source image (generations.submit answers 422 without).
            "if": {"properties": {"kind": {"enum": ["style", "edit"]}}, "required": ["kind"]},
            "then": {"required": ["reference"], "properties": {"reference": {"type": "object"}}},
        },
    )

    prompt: Annotated[TextStr, Field(min_length=1, max_length=2000)]
    kind: JobKind = "generate"
    reference: UploadReference | ImageReference | None = Field(
        default=None, description="Required for `style` and `edit`: the source image."
    )
    model: Annotated[str, Field(max_length=100, pattern=r"^[A-Za-z0-9._-]+$")] | None = Field(
        default=None, description="A preferred model, tried first; others follow on failure."
    )
    visibility: Literal["private", "public"] = "private"
    pack_id: UUID | None = Field(
        default=None,
        description="File the result into this pack of yours; the pack's style prompt and a "
        "few of its icons go along as references, so the new icon keeps the pack's look.",
    )


class JobImage(BaseModel):
    id: UUID = Field(description="The image's id in `/v1/images/{id}` and the gallery.")
    url: str = Field(
        description="A short-lived URL of the PNG: the image's gallery item "
        "(`GET /v1/images/{id}`) carries it as `image_url`."
    )
    width: int | None
    height: int | None
    model: str | None


class Job(BaseModel):
    id: UUID
    status: JobStatus = Field(
        description="pending → running → completed | failed; an attempt that failed and will "
        "be retried puts the job back to pending until `retry_at`."
    )
    progress: int = Field(
        ge=0,
        le=100,
        description="0 → 10 → 60 → 90 → 100; never decreases (a retry keeps what was reached).",
    )
    kind: JobKind | None
    prompt: str | None = Field(description="What the generation was asked for.")
    model: str | None = Field(description="The model that answered (once one has).")
    error: str | None = Field(
        description="Why the job failed (its credits were refunded); while it waits for a "
        "retry (`retry_at` set), why its last attempt failed."
    )
    attempts: int = Field(
        ge=0, description="Attempts started so far; 0 until a worker takes the job."
    )
    retry_at: datetime | None = Field(
        description="Set while the job waits to be tried again after a failed attempt: when "
        "the next attempt may start (`error` says why the last one failed)."
    )
    image: JobImage | None = Field(description="The result, once completed.")
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class JobPage(Page):
    items: list[Job]


class Upload(BaseModel):
    upload_key: str = Field(description="Pass as `reference.upload_key` to a generation.")
    content_type: str = Field(examples=["image/png"])
    width: int
    height: int
    size: int = Field(description="Bytes stored, after metadata was stripped.")
