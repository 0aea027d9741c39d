"""Outgoing-webhook endpoints: registered, listed, changed, rotated and deleted by their owner.

The URL is checked (app.services.webhook_urls, a DNS lookup) before a connection is taken.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import math
import secrets
import uuid

import asyncpg

from app.config import Settings
from app.db import outgoing as outgoing_db
from app.db import users as users_db
from app.errors import Conflict, NotFound, Unprocessable
from app.schemas.outgoing import (
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
)
from app.services import outgoing, pagination, webhook_urls
from app.services.users import User

log = logging.getLogger("atelier.outgoing")

# A page of deliveries unless `limit` says otherwise: the most a page holds, as this listing
# gave before it had pages.
DELIVERIES_LISTED = 100
# After a rotation the old secret signs beside the new one this long, so receivers can
# switch without refusing a delivery meanwhile.
SECRET_OVERLAP_SECONDS = 24 * 3600


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# Per user, the URL check of a registration or a change last started in this process. It
# runs on when its request gives up (its lookup holds a thread until the resolver does), and
# the user's next check waits for it: one at a time per user, so no single account can hold
# every REGISTRATIONS thread.
_checking: dict[str, asyncio.Task[None]] = {}


def _checked(user_id: str, task: asyncio.Task[None]) -> None:
    if _checking.get(user_id) is task:
        del _checking[user_id]
    if not task.cancelled():
        task.exception()  # retrieved: its request may have given up long before


def still_checking(retry_after: int) -> Conflict:
    """The 409 of a URL check that waited its whole deadline for the caller's previous one."""
    detail = "Another webhook URL of yours is still being looked up; try again shortly."
    return Conflict(detail, headers={"Retry-After": str(retry_after)})


async def _check(url: str, settings: Settings, user: User) -> None:
    """RefusedUrl (422) unless `url` may receive webhooks; no connection is held meanwhile."""
    if "#" in url:  # only a fragment's mark: refused here, not at send time (saved before)
        raise webhook_urls.RefusedUrl("The URL must not carry a fragment (#…): it is never sent.")
    if webhook_urls.names_an_address(url):  # no lookup: no thread taken, none waited for
        await webhook_urls.check(url, settings, webhook_urls.REGISTRATIONS)
        return
    loop = asyncio.get_running_loop()
    mine: asyncio.Task[None] | None = None
    try:  # a name whose DNS hangs must not hold the request for the resolver's ~30 s
        async with asyncio.timeout(settings.webhook_timeout_seconds):
            while (running := _checking.get(user.id)) is not None and not running.done():
                if running.get_loop() is not loop:
                    break  # a task of another event loop's, one that has ended
                await asyncio.wait([running])
            mine = asyncio.ensure_future(
                webhook_urls.check(url, settings, webhook_urls.REGISTRATIONS)
            )
            _checking[user.id] = mine
            mine.add_done_callback(functools.partial(_checked, user.id))
            await asyncio.shield(mine)
    except TimeoutError:
        if mine is None:
            raise still_checking(math.ceil(settings.webhook_timeout_seconds)) from None
        raise webhook_urls.RefusedUrl("The host did not resolve in time.") from None


async def create(
    pool: asyncpg.Pool, settings: Settings, user: User, body: WebhookEndpointCreate
) -> WebhookEndpointWithSecret:
    await _check(body.url, settings, user)
    secret = new_secret()
    events: list[str] = sorted(set(body.events))
    most = settings.webhook_endpoints_max
    async with pool.acquire() as conn, conn.transaction():
        await users_db.lock_additions(conn, users_db.Adding.WEBHOOK_ENDPOINT, user.id)
        row = await outgoing_db.insert_endpoint(
            conn, uuid.uuid4(), user.id, body.url, events, secret, most
        )
    if row is None:
        raise too_many(most)
    return WebhookEndpointWithSecret(**dict(row), secret=secret)


def too_many(most: int) -> Conflict:
    """The 409 of a registration over WEBHOOK_ENDPOINTS_MAX, which `limit` names."""
    detail = f"A user may have at most {most} webhook endpoints; delete one to add another."
    return Conflict(detail, limit=most)


async def list_endpoints(conn: asyncpg.Connection, user: User) -> list[WebhookEndpoint]:
    rows = await outgoing_db.endpoints_for(conn, user.id)
    return [WebhookEndpoint.model_validate(dict(r)) for r in rows]


async def get(conn: asyncpg.Connection, user: User, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    row = await outgoing_db.endpoint(conn, endpoint_id, user.id)
    if row is None:
        raise NotFound("No such webhook endpoint.")
    return WebhookEndpoint.model_validate(dict(row))


async def update(
    pool: asyncpg.Pool,
    settings: Settings,
    user: User,
    endpoint_id: uuid.UUID,
    body: WebhookEndpointUpdate,
) -> WebhookEndpoint:
    """Change the url, the events sent, or pause and resume. Pending deliveries go to a new
    url (checked as at registration) at once if their next try was further off than a lease,
    at it otherwise (an attempt under way ends at the old one); new events apply to jobs that
    end from now on. A paused endpoint gets nothing queued, and its pending deliveries are
    parked until it is resumed: then those queued longer ago than the retry schedule lasts
    are failed unsent (they would have been given up by now, unpaused), the others go out a
    lease later (one may have been parked mid-attempt), and on their retry schedule after
    that."""
    changes = body.model_dump(exclude_unset=True)
    cleared = sorted(name for name, value in changes.items() if value is None)
    if cleared:
        raise Unprocessable(f"{' and '.join(cleared)} cannot be cleared; send a new value.")
    if body.url is not None:
        await _check(body.url, settings, user)
    events: list[str] | None = sorted(set(body.events)) if body.events is not None else None
    async with pool.acquire() as conn, conn.transaction():
        old_url = await outgoing_db.lock_endpoint(conn, endpoint_id, user.id)
        if old_url is None:
            raise NotFound("No such webhook endpoint.")
        row = await outgoing_db.update_endpoint(
            conn, endpoint_id, user.id, body.url, events, body.enabled
        )
        if body.enabled:
            await outgoing_db.expire_parked(
                conn, endpoint_id, outgoing.retry_span_seconds(), outgoing.EXPIRED_WHILE_PAUSED
            )
        await outgoing_db.reschedule_pending(
            conn,
            endpoint_id,
            enabled=body.enabled,
            moved=body.url not in (None, old_url),  # the same URL again skips no backoff
            lease_seconds=outgoing.lease_seconds(settings),
        )
    assert row is not None  # locked above
    return WebhookEndpoint.model_validate(dict(row))


async def delete(conn: asyncpg.Connection, user: User, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint and its deliveries: nothing more is sent to it."""
    if not await outgoing_db.delete_endpoint(conn, endpoint_id, user.id):
        raise NotFound("No such webhook endpoint.")


async def rotate_secret(
    conn: asyncpg.Connection, user: User, endpoint_id: uuid.UUID
) -> WebhookEndpointWithSecret:
    """A new secret, used from the next attempt on (pending deliveries included); the one it
    replaces signs beside it for SECRET_OVERLAP_SECONDS."""
    secret = new_secret()
    row = await outgoing_db.set_secret(conn, endpoint_id, user.id, secret, SECRET_OVERLAP_SECONDS)
    if row is None:
        raise NotFound("No such webhook endpoint.")
    return WebhookEndpointWithSecret(**dict(row), secret=secret)


async def forget_replaced_secrets(pool: asyncpg.Pool) -> int:
    """Erase the secrets rotations replaced once their SECRET_OVERLAP_SECONDS are over: they
    sign nothing from then on (reads mask them), and must not stay stored. The worker runs
    this hourly (app.services.sweeps). How many."""
    async with pool.acquire() as conn:
        erased = await outgoing_db.forget_replaced_secrets(conn)
    if erased:
        log.info("erased %d replaced webhook secrets whose overlap was over", erased)
    return erased


async def deliveries(
    conn: asyncpg.Connection, user: User, endpoint_id: uuid.UUID, cursor: str | None, limit: int
) -> WebhookDeliveryList:
    """A page of the endpoint's deliveries, newest first, each with every attempt made."""
    before = pagination.decode_time_id(cursor) if cursor else None
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if await outgoing_db.endpoint(conn, endpoint_id, user.id) is None:
            raise NotFound("No such webhook endpoint.")
        rows = await outgoing_db.deliveries_for(conn, endpoint_id, before, limit + 1)
    page, next_cursor = pagination.split_time_id(rows, limit)
    items = [
        WebhookDelivery(
            id=r["id"],
            type=r["type"],
            job_id=r["job_id"],
            status=r["status"],
            attempts=r["attempt_log"],
            next_attempt_at=r["next_try"] if r["status"] == "pending" else None,
            error=r["last_error"] if r["status"] == "failed" else None,
            delivered_at=r["delivered_at"],
            created_at=r["created_at"],
        )
        for r in page
    ]
    return WebhookDeliveryList(items=items, next_cursor=next_cursor)
