from __future__ import annotations

from fastapi import APIRouter

from app.deps import Conn, CurrentUser
from app.errors import responses
from app.schemas.common import Cursor, Limit
from app.schemas.me import LedgerEntry, LedgerPage, Me
from app.services import credits, profiles

router = APIRouter(prefix="/v1", tags=["account"], responses=responses(401, 503))


@router.get("/me", operation_id="get_me", response_model=Me)
async def get_me(user: CurrentUser, conn: Conn) -> Me:
    """The caller's profile, credit balance and subscription."""
    return await profiles.me(conn, user)


@router.get(
    "/credits/ledger",
    operation_id="list_credit_ledger",
    response_model=LedgerPage,
    responses=responses(400, 422),
)
async def list_credit_ledger(
    user: CurrentUser,
    conn: Conn,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> LedgerPage:
    """Every change to the caller's balance, newest first, one page at a time."""
    rows, next_cursor = await credits.history(conn, user.id, cursor, limit)
    return LedgerPage(
        items=[LedgerEntry.model_validate(dict(r)) for r in rows], next_cursor=next_cursor
    )
