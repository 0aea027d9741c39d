"""The outgoing-webhook sender, run in the worker process beside the job worker.

A job that ends enqueues its deliveries in the transaction that ends it (a trigger,
migration 20261130004000). This loop claims due deliveries (FOR UPDATE SKIP LOCKED, with a
lease), lets the connection go, checks the URL again (and connects only to addresses
app.services.webhook_urls approves as it connects), signs the body as Standard Webhooks
says (`webhook-id`, `webhook-timestamp`, `webhook-signature`) and POSTs it; then takes a
connection again to record the attempt. A failed attempt is retried on RETRY_SCHEDULE, for
about a day, then the delivery is `failed`; so is one that waited out that span parked on a
paused endpoint (app.services.webhook_endpoints.update), unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from pydantic import TypeAdapter
from standardwebhooks import Webhook

from app.config import Settings
from app.db import jobs as jobs_db
from app.db import outgoing as outgoing_db
from app.services import generations, webhook_urls
from app.services.storage.base import Storage

log = logging.getLogger("atelier.outgoing")

# Seconds from a failed attempt to the next: 5 s, 30 s, 2 min, 10 min, 1 h, 4 h, 8 h, 10 h
# (about 23 hours in all, nine attempts); after the last failure the delivery is `failed`.
RETRY_SCHEDULE: tuple[float, ...] = (5, 30, 120, 600, 3600, 4 * 3600, 8 * 3600, 10 * 3600)
# What a delivery parked on a paused endpoint says when the resume finds it older than
# retry_span_seconds: failed unsent, as it would have been given up had it been retried.
EXPIRED_WHILE_PAUSED = "expired while the endpoint was paused"
BATCH = 20
MAX_ERROR_LENGTH = 500
# What a receiver sees the deliveries come from (a firewall rule or a log filter can match it).
USER_AGENT = "Atelier-Webhooks/1.0"
_INSTANT = TypeAdapter(datetime)  # `timestamp` written as every other time of the API is


def retry_in(attempts_before: int) -> float | None:
    """Seconds until the next attempt after attempt number `attempts_before + 1` failed."""
    return RETRY_SCHEDULE[attempts_before] if attempts_before < len(RETRY_SCHEDULE) else None


def retry_span_seconds() -> float:
    """How long the retry schedule keeps a delivery going: about 23 hours."""
    return sum(RETRY_SCHEDULE)


def lease_seconds(settings: Settings) -> float:
    """How long a claimed delivery is its sender's: then someone else's to retry, since its
    attempt could have ended by then."""
    return settings.webhook_timeout_seconds * 2 + 30


class Sender:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        storage: Storage,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._storage = storage
        self._client = client
        self._lease_seconds = lease_seconds(settings)

    async def run(self, stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as stack:
            if self._client is None:
                # No redirects: a 3xx could point anywhere. Connections resolve and check
                # their host as they are made (webhook_urls.CheckedTransport).
                self._client = await stack.enter_async_context(
                    httpx.AsyncClient(
                        timeout=self._settings.webhook_timeout_seconds,
                        follow_redirects=False,
                        transport=webhook_urls.CheckedTransport(self._settings),
                        headers={"User-Agent": USER_AGENT},
                    )
                )
            while not stop.is_set():
                try:
                    sent = await self.send_due()
                except Exception:  # the loop outlives any one bad batch; its leases lapse
                    log.exception("sending webhooks failed; trying again")
                    sent = 0
                if sent == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self._settings.webhook_poll_seconds)

    async def send_due(self) -> int:
        """Send one batch of due deliveries; how many were claimed."""
        jobs: dict[Any, asyncpg.Record | None] = {}
        async with self._pool.acquire() as conn:
            claimed = await outgoing_db.claim_due(conn, BATCH, self._lease_seconds)
            for row in claimed:  # read again at every attempt: see _payload
                jobs[row["id"]] = await jobs_db.get_view(conn, row["job_id"], row["user_id"])
        # No connection is held from here until the attempts are recorded.
        await asyncio.gather(*(self._send(row, jobs.get(row["id"])) for row in claimed))
        return len(claimed)

    async def _payload(self, row: asyncpg.Record, job: asyncpg.Record | None) -> dict[str, Any]:
        """The event as first sent (its `type` and `timestamp` stay), with `data` the job as
        GET /v1/jobs/{id} shows it now: a retry a day later carries an image URL signed for
        it, not one that expired an hour after the first attempt; null once the job is gone.
        The timestamp is when the delivery was queued, in the transaction that ended the
        job, however late the first attempt is sent."""
        first: dict[str, Any] = row["payload"] or {
            "type": row["type"],
            "timestamp": _INSTANT.dump_python(row["created_at"], mode="json"),
        }
        data = None
        if job is not None:
            schema = await generations.to_schema(job, self._storage, self._settings)
            data = schema.model_dump(mode="json")
        return {"type": first["type"], "timestamp": first["timestamp"], "data": data}

    async def _send(self, row: asyncpg.Record, job: asyncpg.Record | None) -> None:
        payload = await self._payload(row, job)
        status_code: int | None = None
        error: str | None = None
        started = time.monotonic()
        deadline = self._settings.webhook_timeout_seconds
        try:
            # One deadline for the whole attempt, DNS lookups and every address tried
            # included, well inside the lease (another sender would take the delivery over).
            async with asyncio.timeout(deadline):
                await webhook_urls.check(row["url"], self._settings)
                status_code = await self._post(row, payload)
            if not 200 <= status_code < 300:
                error = f"the endpoint answered {status_code}"
        except TimeoutError:
            error = f"the attempt took longer than {deadline:g} s"
        except webhook_urls.RefusedUrl as exc:
            error = exc.detail
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
        duration_ms = int((time.monotonic() - started) * 1000)
        delivered = error is None
        async with self._pool.acquire() as conn:
            await outgoing_db.record_attempt(
                conn,
                row["id"],
                row["lease_id"],
                payload=payload,
                status_code=status_code,
                error=error,
                duration_ms=duration_ms,
                delivered=delivered,
                retry_in_seconds=None if delivered else retry_in(row["attempts"]),
            )

    async def _post(self, row: asyncpg.Record, payload: dict[str, Any]) -> int:
        assert self._client is not None
        body = json.dumps(payload, separators=(",", ":"))
        msg_id = str(row["id"])
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            # Space-separated, one per secret: the new one and, for a day after a rotation,
            # the one it replaced (Standard Webhooks: a receiver accepts any that verifies).
            "webhook-signature": " ".join(
                Webhook(secret).sign(msg_id, now, body)
                for secret in (row["secret"], row["previous_secret"])
                if secret is not None
            ),
        }
        response = await self._client.post(row["url"], content=body, headers=headers)
        return response.status_code
