"""Saved prompts (the mobile app's `custom_prompts`): the caller's own only."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from app.db import prompts
from app.errors import NotFound, Unprocessable
from app.schemas.gallery import Prompt, PromptCreate, PromptPage, PromptUpdate
from app.services import pagination


def _schema(row: asyncpg.Record) -> Prompt:
    return Prompt.model_validate(dict(row))


async def listing(
    conn: asyncpg.Connection, user_id: str, cursor: str | None, limit: int
) -> PromptPage:
    before = pagination.decode_time_id(cursor) if cursor else None
    rows = await prompts.page(conn, user_id, before, limit + 1)
    page, next_cursor = pagination.split_time_id(rows, limit)
    return PromptPage(items=[_schema(r) for r in page], next_cursor=next_cursor)


async def get(conn: asyncpg.Connection, prompt_id: UUID, user_id: str) -> Prompt:
    row = await prompts.get(conn, prompt_id, user_id)
    if row is None:
        raise NotFound("No such prompt.")
    return _schema(row)


async def create(conn: asyncpg.Connection, user_id: str, body: PromptCreate) -> Prompt:
    return _schema(await prompts.create(conn, user_id, **body.model_dump()))


async def update(
    conn: asyncpg.Connection, prompt_id: UUID, user_id: str, body: PromptUpdate
) -> Prompt:
    changes = body.model_dump(exclude_unset=True)
    if "prompt_text" in changes and changes["prompt_text"] is None:
        raise Unprocessable("prompt_text cannot be cleared; send a new text instead.")
    row = await prompts.update(conn, prompt_id, user_id, changes)
    if row is None:
        raise NotFound("No such prompt.")
    return _schema(row)


async def delete(conn: asyncpg.Connection, prompt_id: UUID, user_id: str) -> None:
    if not await prompts.delete(conn, prompt_id, user_id):
        raise NotFound("No such prompt.")
