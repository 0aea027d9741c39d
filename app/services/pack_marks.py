"""Marking packs changed (`updated_at`) once a write that changed their icons has committed.

Best effort: the write is done and answered for whatever happens here. A failure is logged
(a bug loudly) and the request goes on, rather than a 500 after the change was made (a
retry would then find nothing left to do, and a deletion would leave its stored object
behind). The mark waits for the packs' rows at most `WAIT_SECONDS`: another client's long
transaction on a pack (the mobile app's rename) must not hold the request and its pooled
connection for the pool's command timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from uuid import UUID

import asyncpg

from app.db import packs as packs_db

log = logging.getLogger("atelier.packs")

WAIT_SECONDS = 2.0
# The connection or the server failed, or the wait ran out: the mark is lost, nothing else.
_TRANSIENT = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.QueryCanceledError,
    asyncpg.LockNotAvailableError,
    OSError,  # TimeoutError included: the wait ran out
)


async def mark_updated(conn: asyncpg.Connection, pack_ids: Iterable[UUID | None]) -> None:
    """`packs.touch` on a connection in no transaction, after the icons' write committed."""
    ids = list(pack_ids)
    try:
        await packs_db.touch(conn, ids, wait_seconds=WAIT_SECONDS)
    except _TRANSIENT as exc:
        log.warning("packs %s not marked updated: %s", ids, exc)
    except asyncpg.PostgresError:
        log.exception("packs %s not marked updated", ids)
