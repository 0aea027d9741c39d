"""A pack's icons asked for in one request: charged together, queued one job per icon.

The set is its jobs: each carries the set's id and its place in `params`, and all of them
are created with their debits and ledger rows by one statement
(`app.db.job_sets.create_set_with_debit`), so too few credits create nothing. After that every
job lives alone: the worker runs it, and a failed one is refunded alone.

Idempotency-Key: the set's first job carries the key and the request's hash (pack and
body), so the same key and body return the same set, another body is a 422, and a key once
used by a single generation (or used for a set by one) is refused by the other too.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from app.config import Settings
from app.db import job_sets
from app.db import jobs as jobs_db
from app.errors import InsufficientCredits, NotFound, Unprocessable
from app.schemas.packs import PackGenerationCreate, PackGenerationSet
from app.services import generations, packs
from app.services.auth import Identity
from app.services.rate_limits import Quota, RateLimited, RateLimiter
from app.services.storage.base import Storage

KIND = "generate"


@dataclass
class Submitted:
    """The answer to a set's submission: the set, the status to send it with, its headers."""

    set: PackGenerationSet
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


def request_hash(pack_id: UUID, body: PackGenerationCreate) -> str:
    what = {"pack_set": str(pack_id), **body.model_dump(mode="json")}
    canonical = json.dumps(what, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def submit(
    ctx: generations.Context,
    who: Identity,
    pack_id: UUID,
    body: PackGenerationCreate,
    *,
    idempotency_key: str | None,
) -> Submitted:
    """Charge and queue the set, or replay the one this Idempotency-Key made: a 202 with the
    jobs (a replay of a set whose jobs have all ended: a 200), `Location` naming the set,
    and the caller's RateLimit-* headers.

    The rate limit counts the set as len(prompts) submissions, before a pooled connection
    is taken; the caller is read, then one connection serves the charge and the answer.
    """
    key = generations.check_idempotency_key(idempotency_key)
    digest = request_hash(pack_id, body)
    quota = await _admit(ctx.limiter, ctx.pool, who.sub, len(body.prompts), key, digest)
    headers = quota.headers() if quota is not None else {}
    # The caller first, on connections of its own (a new user's Clerk lookup holds none).
    user = await ctx.users.authenticate(ctx.pool, who)
    async with ctx.pool.acquire() as conn:
        rows, created = await _create(conn, ctx.settings, user.id, pack_id, body, key, digest)
        made = await _schema(rows, pack_id, ctx.storage, ctx.settings)
    status_code = 202
    if created:
        ctx.metrics.credits_spent.labels(KIND).inc(sum(int(r["cost"]) for r in rows))
    else:
        headers["Idempotent-Replayed"] = "true"
        if made.finished:
            status_code = 200
    headers["Location"] = f"/v1/packs/{pack_id}/generations/{made.id}"
    return Submitted(made, status_code, headers)


async def _admit(
    limiter: RateLimiter,
    pool: asyncpg.Pool,
    user_id: str,
    icons: int,
    key: str | None,
    digest: str,
) -> Quota | None:
    """As for one generation (`generations.admit`): a replay over the limit is let through,
    since it charges and queues nothing."""
    try:
        return await limiter.hit("generations", user_id, cost=icons)
    except RateLimited as refused:
        if key is None:
            raise
        async with pool.acquire() as conn:
            head = await jobs_db.get_by_idempotency_key(conn, user_id, key)
        if head is None or head["request_hash"] != digest:
            raise
        return refused.quota


async def _replay(
    conn: asyncpg.Connection, user_id: str, key: str, digest: str
) -> list[asyncpg.Record] | None:
    head = await jobs_db.get_by_idempotency_key(conn, user_id, key)
    if head is None:
        return None
    set_id = (head["params"] or {}).get("set_id")
    if head["request_hash"] != digest or set_id is None:
        raise Unprocessable(
            "This Idempotency-Key was used with a different request body.",
            idempotency_key=key,
        )
    return await job_sets.set_view(conn, user_id, UUID(set_id))


async def _create(
    conn: asyncpg.Connection,
    settings: Settings,
    user_id: str,
    pack_id: UUID,
    body: PackGenerationCreate,
    key: str | None,
    digest: str,
) -> tuple[list[asyncpg.Record], bool]:
    if key is not None:
        existing = await _replay(conn, user_id, key, digest)
        if existing is not None:
            return existing, False
    style_prompt, icon_keys = await packs.generation_context(
        conn, pack_id, user_id, settings.pack_reference_icons
    )
    params: dict[str, Any] = {
        "visibility": body.visibility,
        "pack_id": str(pack_id),
        "set_id": str(uuid.uuid4()),
    }
    if style_prompt:
        params["style_prompt"] = style_prompt
    if icon_keys:  # the pack's look as it is now, the same for every icon of the set
        params["pack_reference_keys"] = icon_keys
    cost = settings.costs[KIND]
    rows = await job_sets.create_set_with_debit(
        conn,
        job_ids=[uuid.uuid4() for _ in body.prompts],
        user_id=user_id,
        kind=KIND,
        prompts=list(body.prompts),
        params=params,
        cost=cost,
        model=body.model,
        idempotency_key=key,
        request_hash=digest,
    )
    if rows[0]["id"] is not None:
        return sorted(rows, key=lambda r: int(r["params"]["set_index"])), True
    if key is not None:  # a concurrent request with this key won the race
        existing = await _replay(conn, user_id, key, digest)
        if existing is not None:
            return existing, False
    if rows[0]["balance"] is None:
        raise NotFound("No such user.")
    raise InsufficientCredits(balance=rows[0]["balance"], cost=cost * len(body.prompts))


async def _schema(
    rows: list[asyncpg.Record], pack_id: UUID, storage: Storage, settings: Settings
) -> PackGenerationSet:
    jobs = [await generations.to_schema(row, storage, settings) for row in rows]
    return PackGenerationSet(
        id=UUID(rows[0]["params"]["set_id"]),
        pack_id=pack_id,
        jobs=jobs,
        finished=all(job.status in generations.TERMINAL for job in jobs),
    )


async def view(
    conn: asyncpg.Connection,
    storage: Storage,
    settings: Settings,
    user_id: str,
    pack_id: UUID,
    set_id: UUID,
) -> PackGenerationSet:
    """One of the caller's sets, as its jobs are now. The set is read within its pack: once
    the pack is deleted the set is a 404, as the pack is (its jobs stay at /v1/jobs/{id},
    and the icons they made in the gallery); another user's set is a 404 too."""
    await packs.get_own(conn, pack_id, user_id)
    rows = await job_sets.set_view(conn, user_id, set_id)
    if not rows or rows[0]["params"].get("pack_id") != str(pack_id):
        raise NotFound("No such set of icons in this pack.")
    return await _schema(rows, pack_id, storage, settings)
