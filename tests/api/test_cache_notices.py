"""Each API instance remembers users and API keys briefly; whatever changes them in the
database (this service on another instance, the mobile app, an administrator in psql), the
triggers of migration 20261201003000 send a notice on commit and every instance forgets the
entry at once. A notice missed while an instance was disconnected makes it forget all."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.services import users as users_service
from app.services.realtime import FORGET_CHANNEL
from tests.fakes.running import running
from tests.support.auth import assert_unauthorized, bearer
from tests.support.polling import wait_until

Headers = Callable[..., dict[str, str]]
ALICE = "user_notices_alice"
# Remembered for a minute in these tests: only a notice can make an instance forget in time.
REMEMBERED = 60.0
HEARD_WITHIN = 10.0


@pytest.fixture
def long_memory(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Settings]:
    monkeypatch.setattr(users_service, "USER_CACHE_SECONDS", REMEMBERED)

    def make(**changes: object) -> Settings:
        fields: dict[str, object] = {
            "api_key_cache_seconds": REMEMBERED,
            "last_login_interval_seconds": int(REMEMBERED),
            "worker_in_process": False,
        }
        return make_settings(**(fields | changes))

    return make


@asynccontextmanager
async def two_instances(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, FastAPI]]:
    """Two apps on one database, as two `atelier serve` processes: (a, b, b's app)."""
    there = create_app(settings)
    async with running(create_app(settings)) as a, running(there) as b:
        yield a, b, there


async def key_of(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    created = await client.post("/v1/api-keys", json={"name": "ci"}, headers=headers)
    assert created.status_code == 201, created.text
    key: str = created.json()["key"]
    return key


async def refused(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    return (await client.get("/v1/me", headers=headers)).status_code == 401


async def test_an_erased_account_is_refused_at_once_on_every_instance(
    long_memory: Callable[..., Settings], auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    async with two_instances(long_memory()) as (a, b, _):
        key = await key_of(a, alice)
        for client in (a, b):  # both remember her, and her key
            assert (await client.get("/v1/me", headers=alice)).status_code == 200
            assert (await client.get("/v1/me", headers=bearer(key))).status_code == 200

        assert (await a.delete("/v1/me", headers=alice)).status_code == 204

        await wait_until(lambda: refused(b, alice), "b to refuse her token", HEARD_WITHIN)
        await wait_until(lambda: refused(b, bearer(key)), "b to refuse her key", HEARD_WITHIN)
        assert_unauthorized(await a.get("/v1/me", headers=alice))


async def test_a_key_deleted_outside_the_service_is_refused_on_every_instance(
    long_memory: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """An administrator deletes the key in psql: no instance made the change."""
    async with two_instances(long_memory()) as (a, b, _):
        key = await key_of(a, auth_headers(ALICE))
        for client in (a, b):
            assert (await client.get("/v1/me", headers=bearer(key))).status_code == 200

        await db.execute("DELETE FROM api_keys WHERE user_id = $1", ALICE)

        for client in (a, b):

            async def gone(client: httpx.AsyncClient = client) -> bool:
                return await refused(client, bearer(key))

            await wait_until(gone, "a refusal", HEARD_WITHIN)


async def test_notices_missed_while_disconnected_make_an_instance_forget_everything(
    long_memory: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """b's listening connection is cut and the key deleted before b listens again: b never
    hears that notice, and forgets every key and user once it is back."""
    async with two_instances(long_memory()) as (a, b, there):
        key = await key_of(a, auth_headers(ALICE))
        assert (await b.get("/v1/me", headers=bearer(key))).status_code == 200
        listener = there.state.services.hub._conn
        assert listener is not None
        await db.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())
        await db.execute("DELETE FROM api_keys WHERE user_id = $1", ALICE)

        await wait_until(lambda: refused(b, bearer(key)), "b to forget the key", HEARD_WITHIN)
        assert there.state.services.hub._conn is not listener  # it did reconnect


async def test_a_lookup_overtaken_by_the_revocation_is_not_remembered(
    long_memory: Callable[..., Settings],
    auth_headers: Headers,
    db_url: str,
) -> None:
    """b reads a key moments before its deletion commits and then waits on the row (a
    first use records `last_used_at`); whether b hears the notice before or after it
    finishes, the key is not left remembered. Five rounds: the notice comes first in some."""
    async with two_instances(long_memory()) as (a, b, _):
        for _ in range(5):
            key = await key_of(a, auth_headers(ALICE))  # unused yet: its first use touches it
            revoker = await asyncpg.connect(db_url)
            try:
                async with revoker.transaction():
                    await revoker.execute("DELETE FROM api_keys WHERE user_id = $1", ALICE)
                    racing = asyncio.create_task(b.get("/v1/me", headers=bearer(key)))
                    await asyncio.sleep(0.3)  # b has read the row and waits on its lock
            finally:
                await revoker.close()
            assert (await racing).status_code in (200, 401)  # it raced the revocation
            revoked = bearer(key)
            await wait_until(functools.partial(refused, b, revoked), "b to refuse it", 2)
            await asyncio.sleep(0.3)  # a notice handled before the lookup ended is past
            assert await refused(b, revoked)


async def test_only_what_the_caches_hold_sends_a_notice(
    db: asyncpg.Connection, auth_headers: Headers, long_memory: Callable[..., Settings]
) -> None:
    """An email or an erasure is worth a notice; a balance, a login time or a new key is
    not (each generation changes the balance: no notice per job)."""
    heard: list[dict[str, str]] = []
    await db.add_listener(FORGET_CHANNEL, lambda *args: heard.append(json.loads(args[-1])))
    async with two_instances(long_memory()) as (a, _, _):
        alice = auth_headers(ALICE)
        await key_of(a, alice)  # makes her row and her key
        await db.execute("UPDATE users SET credits = credits + 5 WHERE id = $1", ALICE)
        await db.execute("UPDATE users SET last_login_at = now() WHERE id = $1", ALICE)
        await db.execute("UPDATE users SET email = email WHERE id = $1", ALICE)  # unchanged
        await asyncio.sleep(0.3)
        assert heard == []
        await db.execute("UPDATE users SET email = 'new@example.test' WHERE id = $1", ALICE)
        digest = await db.fetchval("SELECT encode(key_hash, 'hex') FROM api_keys")
        await db.execute("DELETE FROM api_keys")
        await wait_until(lambda: len(heard) == 2, "two notices", HEARD_WITHIN)
    assert heard == [{"user": ALICE}, {"api_key": digest}]
