"""Users: created on their first authenticated request, adopted when they predate the service."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from async_lru import alru_cache
from cachetools import LRUCache, TTLCache

from app.config import Settings
from app.db import ledger
from app.db import users as users_db
from app.errors import Conflict, ServiceUnavailable, Unauthorized
from app.services.auth import Identity

log = logging.getLogger("atelier.users")

_SEEN_CAPACITY = 100_000
# How long a user read from the database serves later requests without a new read. Every
# process forgets the user when its row's email or erasure changes (app.services.
# cache_notices), so this is only the bound when a notice never comes; an erased id's
# writes are refused by the database meanwhile (migration 20261130002000).
USER_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class User:
    """Who the caller is. Balances are never read from here: they change under the caller's
    feet, so every route that needs one reads it in its own statement."""

    id: str
    email: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return cls(row["id"], row["email"], row["created_at"])


def primary_email(user: Any) -> str | None:
    """The primary email address of a Clerk user object (the Backend API's answer, or the
    `data` of a `user.created` / `user.updated` webhook); the first address if none is
    marked primary; None if it has none."""
    if not isinstance(user, dict):
        return None
    entries = user.get("email_addresses")
    addresses = {
        a.get("id"): a.get("email_address")
        for a in (entries if isinstance(entries, list) else [])
        if isinstance(a, dict)
    }
    email = addresses.get(user.get("primary_email_address_id"))
    if not email and addresses:
        email = next(iter(addresses.values()))
    return email if isinstance(email, str) and email else None


def _refuse_erased(row: asyncpg.Record) -> None:
    if row["erased_at"] is not None:
        raise Unauthorized("This account was deleted.")


class ClerkDirectory:
    """Clerk's Backend API, asked for an email when the session token carries none."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._url = settings.clerk_api_url.rstrip("/")
        self._secret = settings.clerk_secret_key
        self._client = client
        # A burst of first requests asks Clerk once: callers of a lookup in flight wait for
        # it. ttl=0 keeps nothing after it ends (a failed one is never kept either), so the
        # next first request asks Clerk again.
        self._lookup = alru_cache(maxsize=None, ttl=0)(self._fetch)

    async def email(self, user_id: str) -> str | None:
        if self._secret is None:
            return None
        return await self._lookup(user_id)

    async def _fetch(self, user_id: str) -> str | None:
        assert self._secret is not None
        try:
            response = await self._client.get(
                f"{self._url}/users/{user_id}",
                headers={"Authorization": f"Bearer {self._secret.get_secret_value()}"},
            )
        except httpx.HTTPError as exc:
            raise ServiceUnavailable("Clerk could not be reached to look up the account.") from exc
        if response.status_code == 404:
            raise Unauthorized("Clerk does not know this user.")
        if response.status_code != 200:
            raise ServiceUnavailable(f"Clerk answered {response.status_code} for the account.")
        return primary_email(response.json())


class Users:
    """Turns a verified identity into a user row, writing as little as possible per request."""

    def __init__(self, settings: Settings, directory: ClerkDirectory) -> None:
        self._settings = settings
        self._directory = directory
        # Both caches are only touched on the event loop, so they need no lock.
        # user id → monotonic time of the last login write by this process
        self._seen: LRUCache[str, float] = LRUCache(_SEEN_CAPACITY)
        # user id → the user, read from the database moments ago, for a burst of requests
        ttl = min(USER_CACHE_SECONDS, settings.last_login_interval_seconds)
        self._known: TTLCache[str, User] = TTLCache(_SEEN_CAPACITY, ttl, timer=time.monotonic)
        # Counts forgets: a read that a forget overtook is not remembered (ApiKeys does so too).
        self._forgets = 0

    async def authenticate(self, pool: asyncpg.Pool, identity: Identity) -> User:
        """The caller's row, read (or created) on connections of its own, each held only for
        its statements: a new user's email may need Clerk, and a pooled connection held
        through that wait would leave the pool empty in a signup burst."""
        now = time.monotonic()
        forgets = self._forgets
        known = self._known.get(identity.sub)
        if known is not None:
            # Seen moments ago: skip the read. Whatever needs the row itself (a balance, a
            # foreign key) reads or locks it in its own statement, so nothing relies on this.
            return known
        async with pool.acquire() as conn:
            row = await users_db.get(conn, identity.sub)
            if row is not None:
                _refuse_erased(row)
                await self._touch(conn, identity.sub, now)
                return self._cache(User.from_row(row), forgets)
        # A new user: ask Clerk (when the token has no email) with no connection held.
        email = identity.email or await self._directory.email(identity.sub)
        async with pool.acquire() as conn:
            row = await self._create(conn, identity.sub, email)
        _refuse_erased(row)
        self._seen[identity.sub] = now
        return self._cache(User.from_row(row), forgets)

    async def _touch(self, conn: asyncpg.Connection, user_id: str, now: float) -> None:
        last = self._seen.get(user_id)
        if last is None:
            # First sight in this process: a user the mobile app created gets its opening
            # balance (a no-op for anyone with ledger entries).
            await ledger.open_balance(conn, user_id)
        if last is None or now - last >= self._settings.last_login_interval_seconds:
            await users_db.touch_login(conn, user_id, self._settings.last_login_interval_seconds)
            self._seen[user_id] = now

    def _cache(self, user: User, forgets: int) -> User:
        if self._forgets == forgets:
            self._known[user.id] = user
        return user

    async def ensure(self, pool: asyncpg.Pool, user_id: str, email: str | None) -> User | None:
        """The user's row, created with its signup grant when there is none yet (Clerk's
        `user.created`), by the same statement a first request uses, so the grant is made
        once whichever comes first. None for an erased id: it never comes back. Clerk is
        asked for a missing email with no connection held."""
        async with pool.acquire() as conn:
            row = await users_db.get(conn, user_id)
            if row is not None:
                if row["erased_at"] is not None:
                    return None
                await ledger.open_balance(conn, user_id)
                return User.from_row(row)
        email = email or await self._directory.email(user_id)
        async with pool.acquire() as conn:
            row = await self._create(conn, user_id, email)
        return None if row["erased_at"] is not None else User.from_row(row)

    def forget(self, user_id: str) -> None:
        """Drop what this process remembers of the user (its row changed or was erased): the
        next request reads the row again."""
        self._forgets += 1
        self._known.pop(user_id, None)
        self._seen.pop(user_id, None)

    def forget_all(self) -> None:
        """Drop every remembered user (changes may have gone unheard): rows are read again."""
        self._forgets += 1
        self._known.clear()

    async def _create(
        self, conn: asyncpg.Connection, user_id: str, email: str | None
    ) -> asyncpg.Record:
        if email is None:
            # users.email is NOT NULL UNIQUE in the shared schema; a placeholder on the
            # reserved .invalid domain keeps the account usable until Clerk tells us more.
            email = f"{user_id}@users.invalid"
            log.warning("no email known for %s; stored a placeholder", user_id)
        row = await users_db.create_with_signup(
            conn, user_id, email, self._settings.new_user_credits
        )
        if row is None:
            # Another writer inserted it first, or the id was erased (its tombstone keeps
            # the id taken, so it never becomes a fresh account with new free credits).
            row = await users_db.get(conn, user_id)
            if row is not None and row["erased_at"] is None:
                # If the mobile app inserted it, the row has no ledger entry yet, and
                # authenticate() will not open it in this process.
                await ledger.open_balance(conn, user_id)
        if row is None:
            raise Conflict("This email address already belongs to another account.")
        return row
