"""Refunds and grants, inside the caller's transaction; the ledger's history and its check.

The debit is not here: it is made with its job, in one statement, by
`app.db.jobs.create_with_debit` (through `app.services.generations.create`).
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from app.db import ledger
from app.errors import Conflict, NotFound, Unprocessable
from app.services import pagination

GRANT_REASONS = frozenset({"purchase", "subscription_grant", "admin"})


async def refund(conn: asyncpg.Connection, job_id: UUID) -> int | None:
    """Give back the job's debit, at most once ever; returns the amount refunded now, or None."""
    row = await ledger.refund(conn, job_id)
    return None if row is None else int(row["delta"])


@dataclass(frozen=True)
class GrantResult:
    applied: bool
    balance: int


async def grant(
    conn: asyncpg.Connection,
    user_id: str,
    amount: int,
    reason: str,
    source_id: str,
    note: str | None = None,
) -> GrantResult:
    """Apply `amount` once per `source_id`; a repeated source id changes nothing (applied=False)."""
    if reason not in GRANT_REASONS:
        raise ValueError(f"not a grant reason: {reason}")
    if amount == 0:
        raise Unprocessable("A credit adjustment of 0 changes nothing.")
    # A user the mobile app made and the service never saw has no ledger row yet (the
    # forfeiture of one deleted in Clerk, an administrator's top-up): their balance is opened
    # first, or the grant's row would be the ledger's only one and explain just the change.
    await ledger.open_balance(conn, user_id)
    row = await ledger.grant(conn, user_id, amount, reason, source_id, note)
    if row["balance_after"] is not None:
        return GrantResult(applied=True, balance=int(row["balance_after"]))
    if row["balance"] is None:
        raise NotFound("No such user.")
    # A source id applied before (perhaps by a concurrent retry this statement waited for)
    # is a replay even when applying it again would not fit: asked in a new statement, which
    # sees what committed meanwhile.
    if row["balance"] + amount < 0 and not await ledger.source_used(conn, source_id):
        raise Conflict(
            f"Taking {-amount} credits would leave a negative balance ({row['balance']}).",
            balance=row["balance"],
        )
    return GrantResult(applied=False, balance=int(row["balance"]))


@dataclass(frozen=True)
class Reversal:
    user_id: str
    taken: int
    purchased: int
    balance: int


async def reverse_purchase(
    conn: asyncpg.Connection, purchase_source_id: str, source_id: str, note: str
) -> Reversal | None:
    """Take back a purchase's credits (down to zero at most) once per `source_id`; None when
    there is no such purchase or `source_id` was applied before."""
    row = await ledger.reverse_purchase(conn, purchase_source_id, source_id, note)
    if row is None:
        return None
    return Reversal(
        user_id=row["user_id"],
        taken=-int(row["delta"]),
        purchased=int(row["purchased"]),
        balance=int(row["balance_after"]),
    )


async def history(
    conn: asyncpg.Connection, user_id: str, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    """One page of the user's ledger, newest first, and the cursor of the next page."""
    before = pagination.decode_id(cursor) if cursor else None
    rows = await ledger.page(conn, user_id, before, limit + 1)
    next_cursor = pagination.encode_id(rows[limit - 1]["id"]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def check(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], int]:
    """(users whose balance the ledger does not explain, users with no entry yet)."""
    return await ledger.mismatches(conn), await ledger.count_unopened(conn)
