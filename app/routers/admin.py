"""Administration, for the users in ADMIN_USER_IDS only (anyone else: 403)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from app.deps import AdminUser, Conn, JsonBodyRoute, Svc, sent_once, session_only
from app.openapi import ANY_OPERATION, IDEMPOTENCY_KEY_SCHEMA, responses
from app.schemas.admin import AdminUser as AdminUserView
from app.schemas.admin import CreditAdjustment, CreditAdjustmentResult, Stats
from app.services import admin

# A person signed in, never an API key: a leaked key of an administrator's server must not
# be able to mint credits or take images down.
router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses=responses(*ANY_OPERATION, 401, 403, 503),
    dependencies=[Depends(session_only)],
    route_class=JsonBodyRoute,
)

UserId = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[^\x00]+$")]


@router.post(
    "/users/{user_id}/credits",
    operation_id="admin_adjust_credits",
    response_model=CreditAdjustmentResult,
    responses=responses(400, 404, 409, 422),
)
async def admin_adjust_credits(
    user_id: UserId,
    body: CreditAdjustment,
    caller: AdminUser,
    conn: Conn,
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Retrying with the same key applies it once.",
            json_schema_extra=IDEMPOTENCY_KEY_SCHEMA,
        ),
    ] = None,
) -> CreditAdjustmentResult:
    """Add or take credits through the ledger (reason `admin`, the text as its note). The
    balance never goes below zero: 409 with `balance`."""
    sent_once(request, "Idempotency-Key")
    return await admin.adjust_credits(
        conn, caller.id, user_id, body.delta, body.reason, idempotency_key
    )


@router.get(
    "/users/{user_id}",
    operation_id="admin_get_user",
    response_model=AdminUserView,
    responses=responses(404, 422),
)
async def admin_get_user(user_id: UserId, _: AdminUser, conn: Conn, svc: Svc) -> AdminUserView:
    """One user: profile, balance, subscription, newest ledger rows and jobs."""
    return await admin.user_detail(conn, svc.storage, svc.settings, user_id)


@router.get(
    "/stats", operation_id="admin_get_stats", response_model=Stats, responses=responses(422)
)
async def admin_get_stats(
    _: AdminUser,
    conn: Conn,
    days: Annotated[
        int | None, Query(ge=1, le=admin.MAX_WINDOW_DAYS, description="The last N days.")
    ] = None,
    since: Annotated[
        datetime | None, Query(description="From this time (with a time zone) until now.")
    ] = None,
) -> Stats:
    """Users and signups, jobs by status and model, credits spent and sold, failure and
    refund rates over a window (`days` or `since`; default the last 7 days)."""
    return await admin.usage(conn, admin.window(days, since))


@router.delete(
    "/images/{image_id}",
    operation_id="admin_take_down_image",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def admin_take_down_image(image_id: UUID, _: AdminUser, svc: Svc) -> Response:
    """Take down anyone's image: the row, its likes and the stored object; open feeds are
    told `removed`."""
    await admin.take_down(svc.pool, svc.storage, image_id)
    return Response(status_code=204)
