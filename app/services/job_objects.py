"""The worker's dealings with storage for one attempt: the pack icons it sends along, the
result it stores (with retries), and a result left behind by a job that was deleted."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

import asyncpg

from app.services import imaging, jobs
from app.services.providers.base import ReferenceImage
from app.services.storage.base import ObjectNotFound, Storage, StorageError

log = logging.getLogger("atelier.worker")


async def pack_references(
    storage: Storage, job_id: UUID, params: dict[str, Any]
) -> list[ReferenceImage]:
    """The pack icons chosen when the job was accepted, less any deleted since: they only
    carry the pack's look, so a missing one is no reason to fail the job."""
    found: list[ReferenceImage] = []
    for key in params.get("pack_reference_keys", []):
        try:
            found.append(await imaging.load_reference(storage, key))
        except ObjectNotFound:
            log.info("job %s: pack icon %s was deleted; sent without it", job_id, key)
    return found


async def put_with_retries(storage: Storage, key: str, data: bytes, retries: int) -> None:
    for retry in range(retries + 1):
        try:
            await storage.put(key, data, "image/png")
            return
        except StorageError:
            if retry == retries:
                raise
            await asyncio.sleep(min(0.2 * 2**retry, 5.0))


async def discard_if_orphaned(pool: asyncpg.Pool, storage: Storage, job_id: UUID, key: str) -> None:
    """The job's row is gone (its user was erased while this attempt ran): nothing will
    ever point at the object just stored, and the erasure may have swept before it
    landed. A job that still exists keeps it: a newer attempt writes the same key."""
    if await jobs.exists(pool, job_id):
        return
    try:
        await storage.delete(key)
        log.info("job %s was deleted while it ran; removed its result %s", job_id, key)
    except StorageError as exc:
        log.warning("job %s was deleted while it ran; its result %s remains: %s", job_id, key, exc)
