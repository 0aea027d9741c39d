"""API keys for servers: `Authorization: Bearer atl_…`, acting as the user who made them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import TextStr


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "ci"}]})

    name: Annotated[TextStr, Field(min_length=1, max_length=100)] = Field(
        description="What the key is for, to tell keys apart (1 to 100 characters)."
    )


class ApiKey(BaseModel):
    id: UUID
    name: str
    prefix: str = Field(description="The key's first characters (`atl_` + 8), for display.")
    created_at: datetime
    last_used_at: datetime | None = Field(
        default=None, description="Last use, to within a minute; null if never used."
    )


class ApiKeyCreated(ApiKey):
    key: str = Field(
        description="The key itself (`atl_…`). Shown this once: only its hash is stored."
    )


class ApiKeyList(BaseModel):
    items: list[ApiKey]
