from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.deps import Conn, CurrentUser, JsonBodyRoute, StreamUser, Svc, session_only
from app.openapi import ANY_OPERATION, responses
from app.schemas.common import Cursor, Limit
from app.schemas.me import LedgerEntry, LedgerPage, Me
from app.services import accounts, credits, profiles

router = APIRouter(
    prefix="/v1",
    tags=["account"],
    responses=responses(*ANY_OPERATION, 401, 503),
    route_class=JsonBodyRoute,
)


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


@router.delete(
    "/me",
    operation_id="delete_me",
    status_code=204,
    response_class=Response,
    dependencies=[Depends(session_only)],
    responses=responses(401, 403, 409),
)
async def delete_me(user: StreamUser, svc: Svc) -> Response:
    """Delete the caller's account for good: images (and their files), uploads, likes,
    prompts, packs, jobs and subscription. The ledger keeps its rows without personal data;
    the balance is forfeited. The same sign-in is refused afterwards (401). It needs the
    person signed in: an API key is refused (403), so a leaked key cannot erase an account.
    The Stripe customer is deleted first, ending any subscription: 503 when Stripe cannot
    do it, 409 when a checkout began meanwhile (nothing is erased then; try again)."""
    await accounts.erase(svc.pool, svc.storage, svc.users, user.id, svc.stripe)
    return Response(status_code=204)
