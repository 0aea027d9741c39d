"""The `api_keys` table: a user's keys for servers, kept as SHA-256 hashes."""

from __future__ import annotations

import uuid

import asyncpg

_COLUMNS = "id, user_id, name, prefix, created_at, last_used_at"


async def insert(
    conn: asyncpg.Connection,
    key_id: uuid.UUID,
    user_id: str,
    name: str,
    prefix: str,
    key_hash: bytes,
    most: int,
) -> asyncpg.Record | None:
    """The new key; None when the user has `most` already (nothing is inserted)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        INSERT INTO api_keys (id, user_id, name, prefix, key_hash)
        SELECT $1, $2, $3, $4, $5
        WHERE (SELECT count(*) FROM api_keys WHERE user_id = $2) < $6
        RETURNING {_COLUMNS}
        """,
        key_id,
        user_id,
        name,
        prefix,
        key_hash,
        most,
    )
    return row


async def list_for(conn: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id",
        user_id,
    )
    return rows


async def get(conn: asyncpg.Connection, key_id: uuid.UUID, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1 AND user_id = $2", key_id, user_id
    )


async def delete(conn: asyncpg.Connection, key_id: uuid.UUID, user_id: str) -> bytes | None:
    """Delete the user's key; its hash (to forget it from caches), None when it is not theirs."""
    found: bytes | None = await conn.fetchval(
        "DELETE FROM api_keys WHERE id = $1 AND user_id = $2 RETURNING key_hash",
        key_id,
        user_id,
    )
    return found


async def find(
    conn: asyncpg.Connection, key_hash: bytes, touch_seconds: float
) -> asyncpg.Record | None:
    """The key with this hash, if its owner is not erased (one lookup on the unique index);
    `stale` says whether its last use was recorded more than `touch_seconds` ago."""
    return await conn.fetchrow(
        """
        SELECT k.id, k.user_id, u.email,
               (k.last_used_at IS NULL
                OR k.last_used_at < now() - make_interval(secs => $2)) AS stale
        FROM api_keys k JOIN users u ON u.id = k.user_id
        WHERE k.key_hash = $1 AND u.erased_at IS NULL
        """,
        key_hash,
        touch_seconds,
    )


async def touch(conn: asyncpg.Connection, key_id: uuid.UUID, interval_seconds: float) -> None:
    """Record a use, unless one was recorded within the interval (at most one write a minute)."""
    await conn.execute(
        """
        UPDATE api_keys SET last_used_at = now()
        WHERE id = $1
          AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))
        """,
        key_id,
        interval_seconds,
    )
