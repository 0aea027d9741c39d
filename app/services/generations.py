"""Asking for an image: admit, charge and create the job in one statement, answer; read it back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from app.config import Settings
from app.core import job_errors
from app.db import images
from app.db import jobs as jobs_db
from app.errors import BadRequest, InsufficientCredits, NotFound, Unprocessable
from app.observability import Metrics
from app.schemas.generations import GenerationCreate, ImageReference, Job, JobImage, JobPage
from app.services import packs, pagination
from app.services.auth import Identity
from app.services.rate_limits import Quota, RateLimited, RateLimiter
from app.services.realtime import JOBS_CHANNEL, Hub
from app.services.storage.base import Storage, upload_prefix
from app.services.users import User, Users

TERMINAL = frozenset({"completed", "failed"})
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+)(?:$|[,;\s])")


class Context(Protocol):
    """What a submission uses, as the app opened it (`app.deps.Services` is one)."""

    settings: Settings
    pool: asyncpg.Pool
    users: Users
    storage: Storage
    hub: Hub
    limiter: RateLimiter
    metrics: Metrics


@dataclass
class Submitted:
    """The answer to a submission: the job, the status to send it with, and its headers."""

    job: Job
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


def request_hash(body: GenerationCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def prefer_wait(prefer: str | None, cap: int) -> int:
    """The seconds a `Prefer: wait=N` header asks to wait, at most `cap`; 0 without one."""
    match = _PREFER_WAIT.search(prefer or "")
    return min(int(match.group(1)), cap) if match else 0


def check_idempotency_key(key: str | None) -> str | None:
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters.")
    return key


async def check_upload(storage: Storage, user: User, body: GenerationCreate) -> None:
    """An upload named as the source must be the caller's and stored. The store is asked
    before a pooled connection is taken (it may be across the network); uploads are never
    deleted, so what is found here is still there when the job is charged."""
    ref = body.reference
    if ref is None or isinstance(ref, ImageReference):
        return
    if not ref.upload_key.startswith(upload_prefix(user.id)):
        raise NotFound("No such upload.")
    try:
        found = await storage.exists(ref.upload_key)
    except ValueError:
        found = False
    if not found:
        raise NotFound("No such upload.")


async def _reference_key(
    conn: asyncpg.Connection, user: User, body: GenerationCreate
) -> str | None:
    ref = body.reference
    if ref is None:
        if body.kind in ("style", "edit"):
            article = "An" if body.kind == "edit" else "A"
            raise Unprocessable(f"{article} {body.kind} needs a source image in `reference`.")
        return None
    if isinstance(ref, ImageReference):
        row = await images.get_readable(conn, ref.image_id, user.id)
        if row is None or not row["storage_key"]:
            raise NotFound("No such image (or not one you may use).")
        key: str = row["storage_key"]
        return key
    if not ref.upload_key.startswith(upload_prefix(user.id)):  # check_upload said so too
        raise NotFound("No such upload.")
    return ref.upload_key


async def admit(
    limiter: RateLimiter,
    pool: asyncpg.Pool,
    user_id: str,
    body: GenerationCreate,
    idempotency_key: str | None,
) -> Quota | None:
    """Count a submission against the caller's budget, before anything is charged.

    Checked before a pooled connection is taken (the limiter may be across the network).
    Every submission counts, replays included; but over the limit a replay (this
    Idempotency-Key with this body, the job already made) is let through, since it charges
    and queues nothing: a client retrying a lost answer gets its job rather than a 429.
    """
    try:
        return await limiter.hit("generations", user_id)
    except RateLimited as refused:
        if idempotency_key is None:
            raise
        async with pool.acquire() as conn:
            existing = await jobs_db.get_by_idempotency_key(conn, user_id, idempotency_key)
        if existing is None or existing["request_hash"] != request_hash(body):
            raise
        return refused.quota


def _replay(existing: asyncpg.Record, digest: str) -> asyncpg.Record:
    if existing["request_hash"] != digest:
        raise Unprocessable(
            "This Idempotency-Key was used with a different request body.",
            idempotency_key=existing["idempotency_key"],
        )
    return existing


async def create(
    conn: asyncpg.Connection,
    settings: Settings,
    user: User,
    body: GenerationCreate,
    idempotency_key: str | None,
) -> tuple[asyncpg.Record, bool]:
    """Charge and queue the job (one statement); returns (job, created_now). An upload as
    the source was checked by `check_upload` first."""
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = await jobs_db.get_by_idempotency_key(conn, user.id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    reference = await _reference_key(conn, user, body)
    params: dict[str, Any] = {"visibility": body.visibility}
    if reference is not None:
        params["reference_keys"] = [reference]  # the source: the job cannot run without it
    if body.pack_id is not None:
        style_prompt, icon_keys = await packs.generation_context(
            conn, body.pack_id, user.id, settings.pack_reference_icons
        )
        params["pack_id"] = str(body.pack_id)
        if style_prompt:
            params["style_prompt"] = style_prompt
        # The pack's look: sent when still there, skipped if deleted while the job waits.
        icons = [k for k in icon_keys if k != reference]
        if icons:
            params["pack_reference_keys"] = icons
    cost = settings.costs[body.kind]
    row = await jobs_db.create_with_debit(
        conn,
        job_id=uuid.uuid4(),
        user_id=user.id,
        kind=body.kind,
        prompt=body.prompt,
        params=params,
        cost=cost,
        model=body.model,
        input_image_key=reference,
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    if row["id"] is not None:
        return row, True
    if idempotency_key is not None:  # a concurrent request with this key won the race
        existing = await jobs_db.get_by_idempotency_key(conn, user.id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    if row["balance"] is None:
        raise NotFound("No such user.")
    raise InsufficientCredits(balance=row["balance"], cost=cost)


async def view(
    conn: asyncpg.Connection, storage: Storage, settings: Settings, job_id: UUID, user_id: str
) -> Job:
    row = await jobs_db.get_view(conn, job_id, user_id)
    if row is None:
        raise NotFound("No such job.")
    return await to_schema(row, storage, settings)


async def listing(
    conn: asyncpg.Connection,
    storage: Storage,
    settings: Settings,
    user_id: str,
    *,
    statuses: list[str] | None,
    cursor: str | None,
    limit: int,
) -> JobPage:
    """The caller's jobs, newest first, keyset-paged; `statuses` narrows them."""
    before = pagination.decode_time_id(cursor) if cursor else None
    rows = await jobs_db.page_for_user(
        conn, user_id, statuses=statuses, before=before, limit=limit + 1
    )
    page, next_cursor = pagination.split_time_id(rows, limit)
    return JobPage(
        items=[await to_schema(row, storage, settings) for row in page], next_cursor=next_cursor
    )


async def to_schema(row: asyncpg.Record, storage: Storage, settings: Settings) -> Job:
    image = None
    # NULL once the image was deleted (then the job shows no image); absent from a row that
    # create() just returned, which has no image yet.
    key = row.get("image_key")
    if row["status"] == "completed" and row["image_id"] is not None and key:
        image = JobImage(
            id=row["image_id"],
            url=storage.url(key, expires_in=settings.signed_url_ttl_seconds),
            width=row.get("image_width"),
            height=row.get("image_height"),
            model=row["model"],
        )
    return Job(
        id=row["id"],
        status=row["status"],
        progress=row["progress"],
        kind=row["kind"],
        prompt=row["prompt"],
        model=row["model"],
        error=row["error_message"],
        error_code=job_errors.known(row["error_code"]),
        attempts=row["attempts"],
        # A pending job that has had an attempt is waiting for its retry (or was handed
        # back by a worker that stopped: then at once).
        retry_at=row["available_at"] if row["status"] == "pending" and row["attempts"] else None,
        image=image,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
    )


async def wait_for_end(
    hub: Hub, pool: asyncpg.Pool, job_id: UUID, user_id: str, wait_seconds: float
) -> asyncpg.Record | None:
    """The job once it is completed or failed, or None if `wait_seconds` pass first."""
    deadline = time.monotonic() + wait_seconds
    async with hub.subscribe(JOBS_CHANNEL, str(job_id)) as sub:
        while True:
            async with pool.acquire() as conn:  # subscribed first, so no change slips by
                row = await jobs_db.get_view(conn, job_id, user_id)
            if row is None or row["status"] in TERMINAL:
                return row
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            event = await sub.get(left)
            if event is None:
                return None
            await asyncio.sleep(0)


async def submit(
    ctx: Context,
    who: Identity,
    body: GenerationCreate,
    *,
    idempotency_key: str | None,
    prefer: str | None,
) -> Submitted:
    """Charge the kind's cost and queue the job, or replay the one this Idempotency-Key made;
    with `Prefer: wait=N`, wait up to N seconds for it to end. The answer is a 202 with the
    job as queued (or still running), or a 200 with the job that has ended; `Location` names
    it, and the caller's RateLimit-* headers come along.

    The rate limit is counted before a pooled connection is taken. One connection serves the
    charge and the answer (the caller, when not seen moments ago, is read on one of its
    own first), and none is held while waiting: waiting requests
    holding connections would starve the worker.
    """
    key = check_idempotency_key(idempotency_key)
    wait = prefer_wait(prefer, ctx.settings.max_prefer_wait_seconds)
    quota = await admit(ctx.limiter, ctx.pool, who.sub, body, key)
    headers = quota.headers() if quota is not None else {}
    # No pooled connection is held while Clerk (a new user) or the store is asked.
    user = await ctx.users.authenticate(ctx.pool, who)
    await check_upload(ctx.storage, user, body)
    async with ctx.pool.acquire() as conn:
        row, created = await create(conn, ctx.settings, user, body, key)
        job: Job | None
        if created and not wait:  # a new job: its row is the whole answer
            job = await to_schema(row, ctx.storage, ctx.settings)
        elif not created and (not wait or row["status"] in TERMINAL):
            job = await view(conn, ctx.storage, ctx.settings, row["id"], user.id)
        else:
            job = None
    if created:
        ctx.metrics.credits_spent.labels(body.kind).inc(row["cost"])
    else:
        headers["Idempotent-Replayed"] = "true"
    headers["Location"] = f"/v1/jobs/{row['id']}"
    if job is None:
        headers["Preference-Applied"] = f"wait={wait}"
        await wait_for_end(ctx.hub, ctx.pool, row["id"], user.id, wait)
        async with ctx.pool.acquire() as conn:
            job = await view(conn, ctx.storage, ctx.settings, row["id"], user.id)
    return Submitted(job, 200 if job.status in TERMINAL else 202, headers)
