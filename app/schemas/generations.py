from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.core.job_errors import MEANINGS, JobErrorCode
from app.core.messages import TAG_PREFIX
from app.schemas.common import Page, SafeStr, TextStr

JobStatus = Literal["pending", "running", "completed", "failed"]
JobKind = Literal["generate", "style", "edit"]

# Examples for the OpenAPI document, shared by the models that nest them.
JOB_ID_EXAMPLE = "5f0c9a4e-3b1d-4c2a-9e7f-1a2b3c4d5e6f"
IMAGE_ID_EXAMPLE = "8d2e6f1a-47b3-4c9e-b5a0-9f3e2d1c0b7a"
UPLOAD_KEY_EXAMPLE = "uploads/user_2abcDEF/0b7c4e1f9a2d4c6b8e3f5a7d9c1b2e4f.png"
SIGNED_URL_EXAMPLE = (
    "http://127.0.0.1:8000/files/generations/5f0c9a4e-3b1d-4c2a-9e7f-1a2b3c4d5e6f.png"
    "?exp=1777886223&sig=9c1f4e2b7a3d5f8e0b6c2d4a9e7f1b3c5d8a0e2f4b6c8d1a3e5f7b9c0d2e4f6a"
)
JOB_IMAGE_EXAMPLE: dict[str, Any] = {
    "id": IMAGE_ID_EXAMPLE,
    "url": SIGNED_URL_EXAMPLE,
    "width": 1024,
    "height": 1024,
    "model": "gemini-3.1-flash-image",
}
JOB_EXAMPLE: dict[str, Any] = {
    "id": JOB_ID_EXAMPLE,
    "status": "completed",
    "progress": 100,
    "kind": "generate",
    "prompt": "a watercolor fox, flat icon",
    "model": "gemini-3.1-flash-image",
    "error": None,
    "error_code": None,
    "attempts": 1,
    "retry_at": None,
    "image": JOB_IMAGE_EXAMPLE,
    "created_at": "2026-05-04T09:12:03.418Z",
    "updated_at": "2026-05-04T09:12:11.902Z",
    "completed_at": "2026-05-04T09:12:11.902Z",
}
PENDING_JOB_EXAMPLE: dict[str, Any] = {
    **JOB_EXAMPLE,
    "status": "pending",
    "progress": 0,
    "model": None,
    "attempts": 0,
    "image": None,
    "updated_at": "2026-05-04T09:12:03.418Z",
    "completed_at": None,
}
FAILED_JOB_EXAMPLE: dict[str, Any] = {
    **JOB_EXAMPLE,
    "status": "failed",
    "progress": 10,
    "model": None,
    "error": "the image was blocked by the model's safety filters (finishReason IMAGE_SAFETY)",
    "error_code": "content_refused",
    "image": None,
}


class UploadReference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upload_key: Annotated[SafeStr, Field(min_length=1, max_length=512)] = Field(
        examples=[UPLOAD_KEY_EXAMPLE], description="A key `POST /v1/uploads` returned."
    )


class ImageReference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: UUID = Field(description="One of your images, or a public one.")


def _reference_kind(value: Any) -> str | None:
    """Which reference a value is, by the one key it has, so a mistake is reported against
    that kind alone (a plain union reported it against both: `image_id: "nope"` said
    `upload_key` was missing). None (neither key, or both) is the `reference` error."""
    if isinstance(value, BaseModel):
        return _IMAGE if isinstance(value, ImageReference) else _UPLOAD
    if not isinstance(value, dict):
        return None
    keys = {"upload_key", "image_id"} & value.keys()
    return (_IMAGE if "image_id" in keys else _UPLOAD) if len(keys) == 1 else None


# pydantic puts a union member's tag in an error's loc; errors.py leaves tags (TAG_PREFIX)
# out, so an error reads `reference.image_id`, where the sender put it.
_UPLOAD, _IMAGE = TAG_PREFIX + "upload_key", TAG_PREFIX + "image_id"
Reference = Annotated[
    Annotated[UploadReference, Tag(_UPLOAD)] | Annotated[ImageReference, Tag(_IMAGE)],
    Discriminator(
        _reference_kind,
        custom_error_type="reference",
        custom_error_message='must be {"upload_key": …} or {"image_id": …}',
    ),
]


class GenerationCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "a watercolor fox, flat icon", "kind": "generate"},
                {
                    "prompt": "make it night time",
                    "kind": "edit",
                    "reference": {"upload_key": UPLOAD_KEY_EXAMPLE},
                },
            ],
            # `style` and `edit` need a source image (generations.submit answers 422 without).
            "if": {"properties": {"kind": {"enum": ["style", "edit"]}}, "required": ["kind"]},
            "then": {"required": ["reference"], "properties": {"reference": {"type": "object"}}},
        },
    )

    prompt: Annotated[TextStr, Field(min_length=1, max_length=2000)]
    kind: JobKind = "generate"
    reference: Reference | None = Field(
        default=None, description="Required for `style` and `edit`: the source image."
    )
    model: Annotated[str, Field(max_length=100, pattern=r"^[A-Za-z0-9._-]+$")] | None = Field(
        default=None,
        description="A preferred model, tried first when the provider offers it (Gemini: one "
        "of `GEMINI_MODELS`); others follow on failure. A model the provider does not offer "
        "is not tried, and the job's `model` then says which one answered.",
    )
    visibility: Literal["private", "public"] = "private"
    pack_id: UUID | None = Field(
        default=None,
        description="File the result into this pack of yours; the pack's style prompt and a "
        "few of its icons go along as references, so the new icon keeps the pack's look.",
    )


class JobImage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [JOB_IMAGE_EXAMPLE]})

    id: UUID = Field(description="The image's id in `/v1/images/{id}` and the gallery.")
    url: str = Field(
        description="A short-lived URL of the PNG: the image's gallery item "
        "(`GET /v1/images/{id}`) carries it as `image_url`."
    )
    width: int | None
    height: int | None
    model: str | None


class Job(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [JOB_EXAMPLE, PENDING_JOB_EXAMPLE, FAILED_JOB_EXAMPLE]}
    )

    id: UUID
    status: JobStatus = Field(
        description="pending → running → completed | failed; an attempt that failed and will "
        "be retried puts the job back to pending until `retry_at`."
    )
    progress: int = Field(
        ge=0,
        le=100,
        description="0 → 10 → 60 → 90 → 100; never decreases for a job this service runs (a "
        "retry keeps what was reached; the mobile app writes its own jobs' progress).",
    )
    kind: JobKind | None
    prompt: str | None = Field(description="What the generation was asked for.")
    model: str | None = Field(
        description="The model asked for (`model` of the request, if any) until one answers; "
        "then the model that answered."
    )
    error: str | None = Field(
        description="Why the job failed (its credits were refunded); while it waits for a "
        "retry (`retry_at` set), why its last attempt failed. Words for a person, which may "
        "change: branch on `error_code`."
    )
    error_code: JobErrorCode | None = Field(
        description="`error` as a code, set with it by this service's worker (a job the "
        "mobile app ran itself has none): "
        + "; ".join(f"`{code}`: {meaning}" for code, meaning in MEANINGS.items())
        + ". A job that gave up after its last attempt keeps that attempt's code. Codes may "
        "be added: treat one you do not know as `internal_error`.",
    )
    attempts: int = Field(
        ge=0, description="Attempts started so far; 0 until a worker takes the job."
    )
    retry_at: datetime | None = Field(
        description="Set while the job waits to be tried again, after a failed attempt or "
        "handed back by a worker that stopped: when the next attempt may start (`error` "
        "says why the last one failed, if it did)."
    )
    image: JobImage | None = Field(description="The result, once completed.")
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = Field(
        description="When the job ended, completed or failed (a failed job has one too: "
        "the name is the mobile app's column); null while it is pending or running."
    )


class JobPage(Page):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [PENDING_JOB_EXAMPLE], "next_cursor": None}]}
    )

    items: list[Job]


class Upload(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "upload_key": UPLOAD_KEY_EXAMPLE,
                    "content_type": "image/png",
                    "width": 1024,
                    "height": 768,
                    "size": 482113,
                }
            ]
        }
    )

    upload_key: str = Field(description="Pass as `reference.upload_key` to a generation.")
    content_type: str = Field(examples=["image/png"])
    width: int
    height: int
    size: int = Field(description="Bytes stored, after metadata was stripped.")
