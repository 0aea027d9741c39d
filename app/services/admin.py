"""Administration (ADMIN_USER_IDS): credit adjustments through the ledger, one user's
account, usage statistics, and takedown of any image."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from app.config import Settings
from app.db import ledger, stats
from app.db import users as users_db
from app.errors import NotFound, Unprocessable
from app.schemas.admin import (
    AdminUser,
    CreditAdjustmentResult,
    CreditStats,
    JobCount,
    JobStats,
    Stats,
    UserStats,
)
from app.schemas.me import LedgerEntry
from app.services import credits, gallery, generations, profiles
from app.services.storage.base import Storage

RECENT = 20
MAX_WINDOW_DAYS = 366


def adjustment_source(admin_id: str, idempotency_key: str | None) -> str:
    """The ledger source id of one adjustment: unique, so a retried request with the same
    Idempotency-Key (from the same administrator) is applied once."""
    return f"admin:{admin_id}:{idempotency_key or uuid4()}"


async def adjust_credits(
    conn: asyncpg.Connection,
    admin_id: str,
    user_id: str,
    delta: int,
    reason: str,
    idempotency_key: str | None = None,
) -> CreditAdjustmentResult:
    """Add or take credits through the ledger (`admin` reason, the reason text as its note,
    the administrator's id in its source id). NotFound for an unknown or erased user,
    Conflict (with the balance) when the balance would go below zero."""
    generations.check_idempotency_key(idempotency_key)
    source = adjustment_source(admin_id, idempotency_key)
    result = await credits.grant(conn, user_id, delta, "admin", source, note=reason)
    if result.applied:
        return CreditAdjustmentResult(
            user_id=user_id, delta=delta, balance=result.balance, applied=True
        )
    # A replay: the key's adjustment is the first one. Another user, delta or reason under
    # the same key is another request, which must not pass for a replay of it (a 200 that
    # changed nothing); the same one answers the first result again.
    first = await ledger.by_source(conn, source)
    if first is None or (first["user_id"], first["delta"], first["note"]) != (
        user_id,
        delta,
        reason,
    ):
        raise Unprocessable(
            "This Idempotency-Key was used with a different request.",
            idempotency_key=idempotency_key,
        )
    return CreditAdjustmentResult(
        user_id=user_id, delta=delta, balance=int(first["balance_after"]), applied=False
    )


async def user_detail(
    conn: asyncpg.Connection, storage: Storage, settings: Settings, user_id: str
) -> AdminUser:
    row = await users_db.get(conn, user_id)
    profile = await users_db.get_profile(conn, user_id)
    if row is None or profile is None:
        raise NotFound("No such user.")
    subscription = profiles.subscription_of(profile)
    entries = await ledger.page(conn, user_id, None, RECENT)
    jobs = await generations.listing(
        conn, storage, settings, user_id, statuses=None, cursor=None, limit=RECENT
    )
    return AdminUser(
        id=row["id"],
        email=row["email"],
        credits=row["credits"],
        created_at=row["created_at"],
        last_login_at=row["last_login_at"],
        erased_at=row["erased_at"],
        subscription=subscription,
        ledger=[LedgerEntry.model_validate(dict(r)) for r in entries],
        jobs=jobs.items,
    )


def window(days: int | None, since: datetime | None, now: datetime | None = None) -> datetime:
    """The start of the statistics window: `days` back from now, or `since` (not both;
    neither: 7 days)."""
    now = now or datetime.now(UTC)
    if days is not None and since is not None:
        raise Unprocessable("Give either `days` or `since`, not both.")
    if since is None:
        return now - timedelta(days=7 if days is None else days)
    if since.tzinfo is None:
        raise Unprocessable("`since` needs a time zone (e.g. 2026-11-01T00:00:00Z).")
    if since > now:
        raise Unprocessable("`since` is in the future.")
    if now - since > timedelta(days=MAX_WINDOW_DAYS):
        raise Unprocessable(f"The window is at most {MAX_WINDOW_DAYS} days.")
    return since


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def usage(conn: asyncpg.Connection, since: datetime) -> Stats:
    until = datetime.now(UTC)
    people = await stats.users(conn, since)
    counts = await stats.jobs_by_status_and_model(conn, since)
    money = await stats.credits(conn, since)
    by_status: Counter[str] = Counter()
    by_model: Counter[str] = Counter()
    for r in counts:
        by_status[r["status"]] += r["count"]
        by_model[r["model"] or "none"] += r["count"]
    finished = by_status["completed"] + by_status["failed"]
    return Stats(
        since=since,
        until=until,
        users=UserStats(total=people["total"], signups=people["signups"], erased=people["erased"]),
        jobs=JobStats(
            total=sum(by_status.values()),
            by_status=dict(by_status),
            by_model=dict(by_model),
            by_status_and_model=[
                JobCount(status=r["status"], model=r["model"], count=r["count"]) for r in counts
            ],
        ),
        credits=CreditStats(
            spent=money["debited"] - money["refunded"],
            refunded=money["refunded"],
            sold=money["sold"],
            admin_net=money["admin_net"],
        ),
        failure_rate=_rate(by_status["failed"], finished),
        refund_rate=_rate(money["refunds"], money["debits"]),
    )


async def take_down(pool: asyncpg.Pool, storage: Storage, image_id: UUID) -> None:
    """Delete anyone's image by the gallery's one deletion path (row, then object; the feed
    announces `removed` when it was public)."""
    await gallery.delete(pool, storage, image_id, owner=None)
