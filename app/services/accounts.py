"""Accounts from the identity provider's side: created, changed, erased.

What Clerk's `user.created`, `user.updated` and `user.deleted` webhooks call (the webhook
transport lives elsewhere), and `DELETE /v1/me`. Erasure keeps the users row as a tombstone
(no email, no balance, `erased_at` set) with the user's ledger rows, which hold no personal
data, so the accounts still add up and the id can never become a fresh account again.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import asyncpg

from app.db import erasure, webhook_events
from app.db import subscriptions as subscriptions_db
from app.db import users as users_db
from app.errors import Conflict, NotFound
from app.services import billing, credits
from app.services.billing import StripeApi
from app.services.storage.base import (
    Storage,
    StorageError,
    generation_key,
    generation_prefix,
    upload_prefix,
    user_segment,
)
from app.services.users import User, Users

log = logging.getLogger("atelier.accounts")


def erased_email(user_id: str) -> str:
    """The tombstone's email: unique (users.email is UNIQUE), on the reserved .invalid
    domain, and derived from the id alone, so the person's address is free for a new
    account."""
    return f"{user_segment(user_id)}@erased.invalid"


def forfeit_source(user_id: str) -> str:
    """The ledger source id of the erasure's forfeiture: one per user, ever."""
    return f"erasure:{user_id}"


@dataclass(frozen=True)
class Erasure:
    """What one `erase` call did. `erased_now` is False when the id was already erased (the
    database was left as it was); the stored objects are swept again either way."""

    user_id: str
    erased_now: bool
    images: int = 0
    likes_given: int = 0
    packs: int = 0
    prompts: int = 0
    jobs: int = 0
    forfeited: int = 0
    events_scrubbed: int = 0  # stored webhook events about the user (app.db.webhook_events)
    objects_removed: int = 0  # deletions made (of keys that may hold nothing: see _erase_rows)
    # Keys or prefixes whose objects could not be deleted; erase again to retry them.
    objects_left: list[str] = field(default_factory=list)


async def erase(
    pool: asyncpg.Pool, storage: Storage, users: Users, user_id: str, stripe: StripeApi | None
) -> Erasure:
    """Erase the user: images (rows and objects), uploads, likes given (their images' counts
    drop), prompts, packs, jobs and subscription, and what stored webhook events said about
    the user; the balance is forfeited through the ledger; the users row becomes a
    tombstone, so a still-valid token for the id gets 401.

    The user's Stripe customer is deleted first, which cancels its subscriptions
    (`billing.delete_customer_for_erasure`): when Stripe cannot be asked that is a 503 and
    nothing is erased, since the row that names the customer is about to go.

    Idempotent: a second call changes nothing in the database but stored events about the
    user that arrived since (scrubbed again). The database is done first,
    in one transaction that locks the users row (so no write for the user slips in while it
    runs, and any that tries afterwards is refused by the database); the objects are deleted
    after the commit, with no connection held. A storage failure leaves the database erased
    and the objects listed in `objects_left`: call again to retry them.
    """
    customer = await billing.delete_customer_for_erasure(pool, stripe, user_id)
    keys: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        # An id with no row yet gets its tombstone at once, so a first request racing this
        # erasure finds the id taken (its INSERT … ON CONFLICT waits for this one).
        placeholder = erased_email(user_id)
        if await users_db.insert_tombstone(conn, user_id, placeholder):
            result = Erasure(user_id, erased_now=True)
        else:
            row = await users_db.lock(conn, user_id)
            if row is None:  # deleted outright meanwhile (not by the service): take the id
                await users_db.insert_tombstone(conn, user_id, placeholder)
                result = Erasure(user_id, erased_now=True)
            elif row["erased_at"] is not None:
                result = Erasure(user_id, erased_now=False)
            else:
                await _no_new_customer(conn, user_id, customer)
                result = await _erase_rows(conn, user_id, int(row["credits"]), keys)
    users.forget(user_id)
    # After the commit, in a statement of its own: event processing locks an event's row
    # and then the user's, the reverse of the erasure's order. Every call scrubs (a retry
    # finishes what a failure left), Stripe's events only while the customer is known.
    async with pool.acquire() as conn:
        scrubbed = await webhook_events.scrub_about_user(conn, user_id, customer)
    removed, left = await _delete_objects(storage, user_id, keys)
    outcome = dataclasses.replace(
        result, events_scrubbed=scrubbed, objects_removed=removed, objects_left=left
    )
    log.info(
        "erased %s (now: %s): %d image(s), %d like(s), %d object(s); %d left",
        user_id,
        outcome.erased_now,
        outcome.images,
        outcome.likes_given,
        removed,
        len(left),
    )
    return outcome


async def _no_new_customer(conn: asyncpg.Connection, user_id: str, deleted: str | None) -> None:
    """A first checkout that made a Stripe customer after it was looked up for deletion would
    leave one that no row names: refuse (409), and the next call deletes it."""
    row = await subscriptions_db.get_for_user(conn, user_id)
    if row is not None and (row["stripe_customer_id"] or None) not in (None, deleted):
        raise Conflict("A checkout began while the account was being erased: erase it again.")


async def _erase_rows(
    conn: asyncpg.Connection, user_id: str, balance: int, keys: list[str]
) -> Erasure:
    likes_given = await erasure.delete_likes_given(conn, user_id)
    images = await erasure.delete_images(conn, user_id)
    keys.extend(r["storage_key"] for r in images if r["storage_key"])
    owned = await erasure.delete_owned(conn, user_id)
    # An unfinished job's attempts may have stored results no row points at (a put whose
    # answer was lost, the job then waiting for its retry): no attempt will run to remove
    # them, and their keys hold no user id for the sweep of the user's folders to find.
    for job_id, attempts in zip(owned["attempted"], owned["attempts"], strict=True):
        keys.extend(generation_key(job_id, n) for n in range(1, attempts + 1))
    forfeited = 0
    if balance > 0:
        # Through the one grant path: the ledger explains the tombstone's zero balance.
        await credits.grant(
            conn,
            user_id,
            -balance,
            "admin",
            forfeit_source(user_id),
            note="account erased: balance forfeited",
        )
        forfeited = balance
    await users_db.mark_erased(conn, user_id, erased_email(user_id))
    return Erasure(
        user_id,
        erased_now=True,
        images=len(images),
        likes_given=likes_given,
        packs=int(owned["packs"]),
        prompts=int(owned["prompts"]),
        jobs=int(owned["jobs"]),
        forfeited=forfeited,
    )


async def _delete_objects(storage: Storage, user_id: str, keys: list[str]) -> tuple[int, list[str]]:
    """Best effort, after the commit: each image's object, then everything under the user's
    upload and generation folders (which also catches a result a worker stored for a job
    the erasure deleted). What fails is logged and returned."""
    removed, left = 0, []
    folders = (upload_prefix(user_id), generation_prefix(user_id))
    for key in keys:
        if key.startswith(folders):
            continue  # swept with its folder below
        try:
            await storage.delete(key)
            removed += 1
        except (StorageError, ValueError) as exc:
            log.warning("erasure of %s: object %s remains: %s", user_id, key, exc)
            left.append(key)
    for prefix in folders:
        try:
            removed += await storage.delete_prefix(prefix)
        except StorageError as exc:
            log.warning("erasure of %s: objects under %s remain: %s", user_id, prefix, exc)
            left.append(prefix)
    return removed, left


async def update_email(pool: asyncpg.Pool, users: Users, user_id: str, email: str) -> User:
    """Clerk's `user.updated`: the row's email follows the primary address. NotFound for an
    unknown or erased id (the handler may call `ensure_user` for an unknown one); Conflict
    when another account holds the address."""
    async with pool.acquire() as conn:
        try:
            row = await users_db.set_email(conn, user_id, email)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("This email address already belongs to another account.") from exc
    if row is None:
        raise NotFound("No such user.")
    users.forget(user_id)
    return User.from_row(row)


async def ensure_user(
    pool: asyncpg.Pool, users: Users, user_id: str, email: str | None
) -> User | None:
    """Clerk's `user.created`: the users row with its signup grant, unless it exists (the
    user's first request may have come first: the grant is made once either way). None for
    an erased id, which stays erased; Conflict when another account holds the address.
    With no email, Clerk's Backend API is asked (as on a first request)."""
    return await users.ensure(pool, user_id, email)
