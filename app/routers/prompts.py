"""Saved prompts (`custom_prompts`, shared with the mobile app)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response

from app.deps import Conn, CurrentUser, JsonBodyRoute
from app.openapi import ANY_OPERATION, header_docs, responses
from app.schemas.common import Cursor, Limit
from app.schemas.gallery import Prompt, PromptCreate, PromptPage, PromptUpdate
from app.services import prompts

router = APIRouter(
    prefix="/v1/prompts",
    tags=["prompts"],
    responses=responses(*ANY_OPERATION, 401, 503),
    route_class=JsonBodyRoute,
)


@router.get(
    "", operation_id="list_prompts", response_model=PromptPage, responses=responses(400, 422)
)
async def list_prompts(
    user: CurrentUser,
    conn: Conn,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> PromptPage:
    """The caller's saved prompts, newest first."""
    return await prompts.listing(conn, user.id, cursor, limit)


@router.post(
    "",
    operation_id="create_prompt",
    status_code=201,
    response_model=Prompt,
    responses={
        201: {"headers": header_docs(required=True, Location="The prompt")},
        **responses(422),
    },
)
async def create_prompt(
    body: PromptCreate, user: CurrentUser, conn: Conn, response: Response
) -> Prompt:
    """Save a prompt."""
    prompt = await prompts.create(conn, user.id, body)
    response.headers["Location"] = f"/v1/prompts/{prompt.id}"
    return prompt


@router.get(
    "/{prompt_id}", operation_id="get_prompt", response_model=Prompt, responses=responses(404, 422)
)
async def get_prompt(prompt_id: UUID, user: CurrentUser, conn: Conn) -> Prompt:
    """One of the caller's saved prompts."""
    return await prompts.get(conn, prompt_id, user.id)


@router.patch(
    "/{prompt_id}",
    operation_id="update_prompt",
    response_model=Prompt,
    responses=responses(404, 422),
)
async def update_prompt(
    prompt_id: UUID, body: PromptUpdate, user: CurrentUser, conn: Conn
) -> Prompt:
    """Change the fields sent."""
    return await prompts.update(conn, prompt_id, user.id, body)


@router.delete(
    "/{prompt_id}",
    operation_id="delete_prompt",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def delete_prompt(prompt_id: UUID, user: CurrentUser, conn: Conn) -> Response:
    """Delete one of the caller's saved prompts."""
    await prompts.delete(conn, prompt_id, user.id)
    return Response(status_code=204)
