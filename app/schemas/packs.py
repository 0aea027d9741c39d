"""A pack's icons asked for in one request, and a pack's export."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import TextStr
from app.schemas.gallery import PACK_ID_EXAMPLE
from app.schemas.generations import JOB_EXAMPLE, PENDING_JOB_EXAMPLE, Job

MAX_SET_PROMPTS = 24
SET_ID_EXAMPLE = "b2d4f6a8-0c1e-4a3c-9e5b-7d9f1b3d5f7a"


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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": SET_ID_EXAMPLE,
                    "pack_id": PACK_ID_EXAMPLE,
                    "jobs": [
                        {**JOB_EXAMPLE, "prompt": "a rocket"},
                        {
                            **PENDING_JOB_EXAMPLE,
                            "id": "6a8c0e2b-4d6f-4b8a-9c1e-3f5a7c9e1b3d",
                            "status": "running",
                            "progress": 60,
                            "prompt": "a planet",
                        },
                    ],
                    "finished": False,
                }
            ]
        }
    )

    id: UUID = Field(description="The set: `GET /v1/packs/{pack_id}/generations/{id}`.")
    pack_id: UUID
    jobs: list[Job] = Field(description="One job per prompt, in the order of `prompts`.")
    finished: bool = Field(description="Whether every job has completed or failed.")
