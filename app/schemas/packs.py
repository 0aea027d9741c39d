"""A pack's icons asked for in one request, and a pack's export."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import TextStr
from app.schemas.generations import Job

MAX_SET_PROMPTS = 24


class PackGenerationCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompts": ["a rocket", "a planet", "a comet"]}]},
    )

    prompts: list[Annotated[TextStr, Field(min_length=1, max_length=2000)]] = Field(
        min_length=1,
        max_length=MAX_SET_PROMPTS,
        description=f"One subject per icon, 1 to {MAX_SET_PROMPTS}; each costs one generation.",
    )
    model: Annotated[str, Field(max_length=100, pattern=r"^[A-Za-z0-9._-]+$")] | None = Field(
        default=None, description="A preferred model, tried first; others follow on failure."
    )
    visibility: Literal["private", "public"] = Field(
        default="private", description="Of every icon made (a pack is public when all are)."
    )


class PackGenerationSet(BaseModel):
    id: UUID = Field(description="The set: `GET /v1/packs/{pack_id}/generations/{id}`.")
    pack_id: UUID
    jobs: list[Job] = Field(description="One job per prompt, in the order of `prompts`.")
    finished: bool = Field(description="Whether every job has completed or failed.")
