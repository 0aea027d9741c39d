"""Incoming webhooks, whatever their provider: stored once by the provider's event id,
processed once, failures kept on the stored event for `atelier webhooks replay`.

A provider plugs in with a `Handler` registered under its name (`Handlers`, built in
app/main.py). Processing has two steps so that no pooled connection waits on the network:

1. `prepare(event)`: anything the handler must ask the provider (re-read a subscription,
   look up a payment), with no connection held. It may run for duplicates too.
2. `apply(conn, event, prepared)`: the database writes, inside one transaction that holds
   the stored event's row lock. Concurrent deliveries of one event queue on that lock and
   find it processed, so it applies once; `apply` should still be idempotent (ledger source
   ids, conditional updates), because a replay after a crash may repeat it.

Verifying the signature is the route's job (a dependency), before anything is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import asyncpg

from app.db import webhook_events
from app.errors import AppError

log = logging.getLogger("atelier.webhooks")

Outcome = Literal["processed", "duplicate"]
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Event:
    provider: str
    id: str
    type: str
    payload: dict[str, Any]


class Handler(Protocol):
    async def prepare(self, event: Event) -> object:
        """Network work before the transaction (no connection held); the result goes to apply."""
        ...

    async def apply(self, conn: asyncpg.Connection, event: Event, prepared: object) -> None:
        """Apply the event inside the caller's transaction (the event row is locked)."""
        ...


Handlers = Mapping[str, Handler]


class WebhookFailed(AppError):
    """Processing failed: a 500, so the provider delivers the event again later."""

    status, slug, title = 500, "webhook-failed", "Webhook processing failed"


async def receive(pool: asyncpg.Pool, handlers: Handlers, event: Event) -> Outcome:
    """Store the event (once) and process it unless that was done before."""
    async with pool.acquire() as conn:
        row = await webhook_events.insert(conn, event.provider, event.id, event.type, event.payload)
    if row["processed_at"] is not None:
        return "duplicate"
    return await process(pool, handlers, event)


async def process(pool: asyncpg.Pool, handlers: Handlers, event: Event) -> Outcome:
    """Apply a stored event once; a failure is kept on it and raised as WebhookFailed."""
    handler = handlers.get(event.provider)
    if handler is None:
        raise WebhookFailed(f"No handler for {event.provider} webhooks is configured.")
    try:
        prepared = await handler.prepare(event)
        async with pool.acquire() as conn, conn.transaction():
            row = await webhook_events.lock(conn, event.provider, event.id)
            if row is None or row["processed_at"] is not None:
                return "duplicate"
            await handler.apply(conn, event, prepared)
            await webhook_events.mark_processed(conn, event.provider, event.id)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        log.warning(
            "%s webhook %s (%s) failed: %s",
            event.provider,
            event.id,
            event.type,
            error,
            exc_info=not isinstance(exc, AppError),
        )
        async with pool.acquire() as conn:
            await webhook_events.mark_failed(conn, event.provider, event.id, error)
        raise WebhookFailed(
            f"The {event.provider} event {event.id} could not be processed; it is kept and "
            "will be applied when delivered again or replayed."
        ) from exc
    return "processed"


@dataclass(frozen=True)
class ReplayResult:
    provider: str
    event_id: str
    type: str
    outcome: Outcome | None
    error: str | None


async def replay(
    pool: asyncpg.Pool,
    handlers: Handlers,
    provider: str | None = None,
    event_id: str | None = None,
    limit: int = 1000,
) -> list[ReplayResult]:
    """Process again the stored events that did not complete, oldest first."""
    async with pool.acquire() as conn:
        rows = await webhook_events.unprocessed(conn, provider, event_id, limit)
    results = []
    for row in rows:
        event = Event(row["provider"], row["event_id"], row["type"], row["payload"])
        try:
            outcome = await process(pool, handlers, event)
        except WebhookFailed as exc:
            async with pool.acquire() as conn:
                stored = await webhook_events.get(conn, event.provider, event.id)
            error = stored["error"] if stored is not None else str(exc)
            results.append(ReplayResult(event.provider, event.id, event.type, None, error))
        else:
            results.append(ReplayResult(event.provider, event.id, event.type, outcome, None))
    return results


# Rows one statement of the sweep changes: each batch is a short transaction of its own.
EXPIRE_BATCH = 1000


async def expire_payloads(pool: asyncpg.Pool, days: int) -> int:
    """Drop the payloads of events processed more than `days` ago (WEBHOOK_EVENT_PAYLOAD_DAYS;
    0 keeps them), in batches; the worker runs this hourly (app.services.sweeps). Replay only
    needs events that did not complete, and a redelivery is turned away by the event's id,
    which stays. How many."""
    if days <= 0:
        return 0
    total = 0
    while True:
        async with pool.acquire() as conn:
            done = await webhook_events.expire_payloads(conn, days, EXPIRE_BATCH)
        total += done
        # Until a batch finds nothing: one can change fewer than it picked (a row updated
        # meanwhile is locked at a version the statement does not see), and more may be left.
        if done == 0:
            break
    if total:
        log.info(
            "dropped the payloads of %d webhook events processed over %d days ago", total, days
        )
    return total
