"""API keys for servers: `Authorization: Bearer atl_…`, acting as the user who made them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import LineStr


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "ci"}]})

    name: Annotated[LineStr, Field(min_length=1, max_length=100)] = Field(
        description="What the key is for, to tell keys apart (1 to 100 characters)."
    )


API_KEY_EXAMPLE: dict[str, Any] = {
    "id": "2b7e1c4a-9d3f-4e8b-a6c0-5f1d3b7e9a2c",
    "name": "ci",
    "prefix": "atl_Q3vK9xZp",
    "created_at": "2026-05-03T14:21:07.553Z",
    "last_used_at": "2026-05-04T09:12:03Z",
}


class ApiKey(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [API_KEY_EXAMPLE]})

    id: UUID
    name: str
    prefix: str = Field(description="The key's first characters (`atl_` + 8), for display.")
    created_at: datetime
    last_used_at: datetime | None = Field(
        default=None, description="Last use, to within a minute; null if never used."
    )


class ApiKeyCreated(ApiKey):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **API_KEY_EXAMPLE,
                    "last_used_at": None,
                    "key": "atl_Q3vK9xZp7LmN2bR8tY4wE6uI0oP1aS5dF9gH3jK7lZc",
                }
            ]
        }
    )

    key: str = Field(
        description="The key itself (`atl_…`). Shown this once: only its hash is stored."
    )


class ApiKeyList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [API_KEY_EXAMPLE]}]})

    items: list[ApiKey]
