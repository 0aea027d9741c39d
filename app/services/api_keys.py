"""API keys for servers: made, listed and revoked by their owner, verified per request.

A key is `atl_` + 32 random bytes (secrets.token_urlsafe), shown once. Only its SHA-256 is
stored: a fast hash is right here, because the secret has 256 bits of entropy (a slow
password hash defends guessable secrets, and would make every request pay for it).
Verifying is one lookup on the hash's unique index, remembered for a few seconds
(API_KEY_CACHE_SECONDS) like a verified session token; a revocation forgets the key at once
in the process that made it, and in the others as soon as the database's notice reaches them
(app.services.cache_notices), at worst when their entry lapses.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
import uuid

import asyncpg
from cachetools import TTLCache

from app.config import Settings
from app.db import api_keys as api_keys_db
from app.db import users as users_db
from app.errors import Conflict, NotFound, Unauthorized
from app.schemas.api_keys import ApiKey, ApiKeyCreated
from app.services.auth import Identity
from app.services.users import User

KEY_PREFIX = "atl_"
ISSUER = "api-key"
PREFIX_LENGTH = len(KEY_PREFIX) + 8
# token_urlsafe(32): 43 characters of the URL-safe base64 alphabet.
_WELL_FORMED = re.compile(r"atl_[A-Za-z0-9_-]{43}")
_CACHE_CAPACITY = 10_000
# users.last_login_at is written sparingly for the same reason: a key used by a busy server
# would otherwise write its row on every cache miss.
LAST_USED_INTERVAL_SECONDS = 60.0


def is_api_key(token: str) -> bool:
    """Whether a bearer token is meant as an API key (it is then never parsed as a JWT)."""
    return token.startswith(KEY_PREFIX)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """Verifies keys, remembering each briefly; only touched on the event loop (no lock)."""

    def __init__(self, cache_seconds: float = 5.0) -> None:
        self._cache: TTLCache[bytes, Identity] | None = (
            TTLCache(_CACHE_CAPACITY, cache_seconds, timer=time.monotonic)
            if cache_seconds > 0
            else None
        )
        # Counts forgets: a lookup that a forget overtook is not remembered, since the row
        # it read may be the one the forget was about (a revocation committing mid-lookup).
        self._forgets = 0

    async def verify(self, pool: asyncpg.Pool, key: str) -> Identity:
        """The key's owner; a connection is taken only when the key is not remembered."""
        digest, found = self._remembered(key)
        if found is not None:
            return found
        async with pool.acquire() as conn:
            return await self._look_up(conn, digest)

    def _remembered(self, key: str) -> tuple[bytes, Identity | None]:
        if _WELL_FORMED.fullmatch(key) is None:
            raise Unauthorized("The API key is malformed.")
        digest = key_hash(key)
        return digest, self._cache.get(digest) if self._cache is not None else None

    async def _look_up(self, conn: asyncpg.Connection, digest: bytes) -> Identity:
        forgets = self._forgets
        row = await api_keys_db.find(conn, digest, LAST_USED_INTERVAL_SECONDS)
        if row is None:
            raise Unauthorized("The API key is unknown or was revoked.")
        if row["stale"]:
            await api_keys_db.touch(conn, row["id"], LAST_USED_INTERVAL_SECONDS)
        identity = Identity(
            sub=row["user_id"],
            email=row["email"],
            issuer=ISSUER,
            expires_at=math.inf,  # a key lasts until it is revoked
            api_key_id=str(row["id"]),
        )
        if self._cache is not None and self._forgets == forgets:
            self._cache[digest] = identity
        return identity

    def forget(self, digest: bytes) -> None:
        self._forgets += 1
        if self._cache is not None:
            self._cache.pop(digest, None)

    def forget_all(self) -> None:
        self._forgets += 1
        if self._cache is not None:
            self._cache.clear()


async def create(
    conn: asyncpg.Connection, settings: Settings, user: User, name: str
) -> ApiKeyCreated:
    """A new key, unless the user has API_KEYS_MAX already: a 409 then."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    most = settings.api_keys_max
    async with conn.transaction():
        await users_db.lock_additions(conn, users_db.Adding.API_KEY, user.id)
        row = await api_keys_db.insert(
            conn, uuid.uuid4(), user.id, name, key[:PREFIX_LENGTH], key_hash(key), most
        )
    if row is None:
        raise too_many(most)
    return ApiKeyCreated(**dict(row), key=key)


def too_many(most: int) -> Conflict:
    """The 409 of a key over API_KEYS_MAX, which `limit` names."""
    return Conflict(
        f"A user may have at most {most} API keys; revoke one to make another.", limit=most
    )


async def list_keys(conn: asyncpg.Connection, user: User) -> list[ApiKey]:
    return [ApiKey.model_validate(dict(r)) for r in await api_keys_db.list_for(conn, user.id)]


async def get(conn: asyncpg.Connection, user: User, key_id: uuid.UUID) -> ApiKey:
    row = await api_keys_db.get(conn, key_id, user.id)
    if row is None:
        raise NotFound("No such API key.")
    return ApiKey.model_validate(dict(row))


async def revoke(conn: asyncpg.Connection, keys: ApiKeys, user: User, key_id: uuid.UUID) -> None:
    """Delete the key; this process forgets it at once. Another user's key is a 404."""
    digest = await api_keys_db.delete(conn, key_id, user.id)
    if digest is None:
        raise NotFound("No such API key.")
    keys.forget(digest)
