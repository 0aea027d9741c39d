"""API keys for servers (issue 10, point 5): made and revoked by a signed-in person, shown
once, stored as a hash, accepted as a bearer token wherever a session token is."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.fakes.running import running
from tests.support.auth import assert_unauthorized, bearer
from tests.support.polling import wait_until
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
ALICE, BOB = "user_keys_alice", "user_keys_bob"


async def make_key(client: httpx.AsyncClient, headers: dict[str, str], name: str = "ci") -> Any:
    response = await client.post("/v1/api-keys", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v1/api-keys/{response.json()['id']}"
    return response.json()


async def test_a_key_is_shown_once_and_only_its_hash_is_stored(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    created = await make_key(client, auth_headers(ALICE), "build server")
    key = created["key"]
    assert key.startswith("atl_") and len(key) == 47
    assert created["prefix"] == key[:12] and created["name"] == "build server"
    assert set(created) == {"id", "name", "prefix", "created_at", "last_used_at", "key"}

    listed = (await client.get("/v1/api-keys", headers=auth_headers(ALICE))).json()["items"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and listed[0]["prefix"] == created["prefix"]
    assert listed[0]["last_used_at"] is None
    one = await client.get(f"/v1/api-keys/{created['id']}", headers=auth_headers(ALICE))
    assert one.status_code == 200 and one.json() == listed[0]

    row = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
    assert row is not None and row["key_hash"] == hashlib.sha256(key.encode()).digest()
    assert key not in str(dict(row)) and key[4:] not in str(dict(row))


async def test_a_key_acts_as_its_owner_and_spends_the_owners_credits(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    key = (await make_key(client, auth_headers(ALICE)))["key"]
    me = await client.get("/v1/me", headers=bearer(key))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == ALICE
    before = me.json()["credits"]

    job = await client.post("/v1/generations", json={"prompt": "a fox"}, headers=bearer(key))
    assert job.status_code in (201, 202), job.text
    after = (await client.get("/v1/me", headers=auth_headers(ALICE))).json()["credits"]
    assert after == before - 1
    seen = await client.get(f"/v1/jobs/{job.json()['id']}", headers=auth_headers(ALICE))
    assert seen.status_code == 200

    listed = (await client.get("/v1/api-keys", headers=auth_headers(ALICE))).json()["items"]
    assert listed[0]["last_used_at"] is not None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/api-keys", None),
        ("POST", "/v1/api-keys", {"name": "another"}),
        ("DELETE", "/v1/api-keys/00000000-0000-0000-0000-000000000000", None),
        ("GET", "/v1/billing/products", None),
        ("POST", "/v1/billing/checkout", {"product": "credits_100"}),
        ("POST", "/v1/billing/portal", {}),
        ("DELETE", "/v1/me", None),  # a leaked key may not erase its owner's account
    ],
)
async def test_a_key_is_refused_on_key_management_and_billing(
    client: httpx.AsyncClient, auth_headers: Headers, method: str, path: str, body: Any
) -> None:
    key = (await make_key(client, auth_headers(ALICE)))["key"]
    response = await client.request(method, path, json=body, headers=bearer(key))
    assert_problem(response, 403)
    assert (await client.get("/v1/me", headers=auth_headers(ALICE))).status_code == 200


async def test_a_revoked_key_is_refused_at_once_here_and_as_soon_as_the_others_hear(
    make_settings: Callable[..., Settings], auth_headers: Headers
) -> None:
    """Each instance remembers a key for a minute here; the other one forgets it on the
    database's notice of the delete (app.services.cache_notices), not when it lapses."""
    ttl = 60.0
    here = create_app(make_settings(api_key_cache_seconds=ttl))
    there = create_app(make_settings(api_key_cache_seconds=ttl, worker_in_process=False))
    async with running(here) as a, running(there) as b:
        created = await make_key(a, auth_headers(ALICE))
        key = created["key"]
        assert (await a.get("/v1/me", headers=bearer(key))).status_code == 200
        assert (await b.get("/v1/me", headers=bearer(key))).status_code == 200  # cached there

        deleted = await a.delete(f"/v1/api-keys/{created['id']}", headers=auth_headers(ALICE))
        assert deleted.status_code == 204
        revoked_at = time.monotonic()
        assert_unauthorized(await a.get("/v1/me", headers=bearer(key)))

        async def refused_there() -> bool:
            return (await b.get("/v1/me", headers=bearer(key))).status_code == 401

        # the notice: far inside the minute the key would otherwise be remembered there
        await wait_until(refused_there, "the other instance to refuse the revoked key", 10)
        assert time.monotonic() - revoked_at < 10
        listed = (await a.get("/v1/api-keys", headers=auth_headers(ALICE))).json()["items"]
        assert listed == []
        assert_problem(
            await a.get(f"/v1/api-keys/{created['id']}", headers=auth_headers(ALICE)), 404
        )


async def test_a_user_has_at_most_api_keys_max_even_making_them_at_once(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    """One key over the cap is a 409 that names the limit and makes nothing, also when ten
    requests race (they are serialised per user); another user's keys count apart, and
    revoking one makes room."""
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    async with running(create_app(make_settings(api_keys_max=3))) as client:
        await client.get("/v1/me", headers=alice)  # her row exists before the race
        raced = await asyncio.gather(
            *(client.post("/v1/api-keys", json={"name": f"k{n}"}, headers=alice) for n in range(10))
        )
        assert sorted(r.status_code for r in raced) == [201] * 3 + [409] * 7
        refused = assert_problem(next(r for r in raced if r.status_code == 409), 409)
        assert refused["limit"] == 3
        assert (
            refused["detail"] == "A user may have at most 3 API keys; revoke one to make another."
        )
        counted = "SELECT count(*) FROM api_keys WHERE user_id = $1"
        assert await db.fetchval(counted, ALICE) == 3
        await make_key(client, bob)
        first = next(r for r in raced if r.status_code == 201).json()["id"]
        assert (await client.delete(f"/v1/api-keys/{first}", headers=alice)).status_code == 204
        await make_key(client, alice)
        assert_problem(await client.post("/v1/api-keys", json={"name": "x"}, headers=alice), 409)
        assert await db.fetchval(counted, ALICE) == 3


async def test_another_users_key_cannot_be_deleted(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    created = await make_key(client, auth_headers(ALICE))
    response = await client.delete(f"/v1/api-keys/{created['id']}", headers=auth_headers(BOB))
    assert_problem(response, 404)
    assert (await client.get("/v1/me", headers=bearer(created["key"]))).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"name": "a\u0000b"},
        {"name": 5},
        {"name": "x\u0007y"},  # a bell
        {"name": "line1\nline2"},
        {"name": "\u202etxt.exe"},  # shown as "exe.txt"
        {"name": "\tdeploy"},
        {"name": "a\u2028b"},
    ],
)
async def test_a_key_needs_a_usable_name(
    client: httpx.AsyncClient, auth_headers: Headers, body: dict[str, Any]
) -> None:
    response = await client.post("/v1/api-keys", json=body, headers=auth_headers(ALICE))
    assert_problem(response, 422)
    listed = await client.get("/v1/api-keys", headers=auth_headers(ALICE))
    assert listed.json()["items"] == []


@pytest.mark.parametrize(
    "token",
    [
        "atl_",
        "atl_short",
        "atl_" + "A" * 43,  # well-formed, never issued
        "atl_" + "A" * 42 + "!",
        "atl_" + "A" * 44,
    ],
)
async def test_a_malformed_or_unknown_key_is_a_401(
    client: httpx.AsyncClient, auth_headers: Headers, token: str
) -> None:
    await make_key(client, auth_headers(ALICE))
    assert_unauthorized(await client.get("/v1/me", headers=bearer(token)))


async def test_an_erased_users_keys_are_refused_and_gone(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    key = (await make_key(client, auth_headers(ALICE)))["key"]
    assert (await client.get("/v1/me", headers=bearer(key))).status_code == 200
    assert (await client.delete("/v1/me", headers=auth_headers(ALICE))).status_code == 204

    async def refused() -> bool:
        return (await client.get("/v1/me", headers=bearer(key))).status_code == 401

    await wait_until(refused, "the erased user's key to be refused")
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", ALICE) == 0


async def test_last_use_is_written_at_most_once_a_minute(
    make_settings: Callable[..., Settings], auth_headers: Headers, db: asyncpg.Connection
) -> None:
    app = create_app(make_settings(api_key_cache_seconds=0, worker_in_process=False))
    async with running(app) as client:
        created = await make_key(client, auth_headers(ALICE))
        key, key_id = created["key"], created["id"]

        async def last_used() -> Any:
            return await db.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)

        assert (await client.get("/v1/me", headers=bearer(key))).status_code == 200
        first = await last_used()
        assert first is not None
        assert (await client.get("/v1/me", headers=bearer(key))).status_code == 200
        assert await last_used() == first  # looked up again (no cache), not written again

        await db.execute(
            "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = $1",
            key_id,
        )
        assert (await client.get("/v1/me", headers=bearer(key))).status_code == 200
        assert await last_used() > first


async def test_a_key_is_found_by_its_hashs_unique_index(db: asyncpg.Connection) -> None:
    await db.execute("SET enable_seqscan = off")  # the table is tiny: ask what it would use
    rows = await db.fetch(
        """EXPLAIN (FORMAT TEXT)
           SELECT k.id FROM api_keys k JOIN users u ON u.id = k.user_id
           WHERE k.key_hash = $1 AND u.erased_at IS NULL""",
        hashlib.sha256(b"x").digest(),
    )
    plan = "\n".join(r[0] for r in rows)
    assert "Index Scan using api_keys_key_hash_key" in plan, plan


async def test_a_key_opens_its_owners_private_image_where_a_token_is_optional(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    key = (await make_key(client, alice))["key"]
    job = await client.post(
        "/v1/generations", json={"prompt": "a fox"}, headers={**alice, "Prefer": "wait=10"}
    )
    image_id = job.json()["image"]["id"]
    path = f"/v1/images/{image_id}/download?redirect=false"
    assert_unauthorized(await client.get(path))  # private: no token, no link
    assert (await client.get(path, headers=bearer(key))).status_code == 200
    assert_unauthorized(await client.get(path, headers=bearer("atl_" + "B" * 43)))


async def test_an_administrators_key_cannot_use_the_admin_routes(
    make_settings: Callable[..., Settings], auth_headers: Headers
) -> None:
    """Keys are for servers: minting credits or taking images down needs the person."""
    application = create_app(make_settings(admin_user_ids=[ALICE], worker_in_process=False))
    async with running(application) as client:
        key = (await make_key(client, auth_headers(ALICE)))["key"]
        grant = {"delta": 1000, "reason": "from a leaked key"}
        by_key = await client.post(
            "/v1/admin/users/user_anyone/credits", json=grant, headers=bearer(key)
        )
        assert_problem(by_key, 403)
        stats = await client.get("/v1/admin/stats", headers=bearer(key))
        assert_problem(stats, 403)
        by_person = await client.get("/v1/admin/stats", headers=auth_headers(ALICE))
        assert by_person.status_code == 200, by_person.text


async def test_a_route_that_also_checks_the_caller_verifies_the_token_once(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`session_only` and `rate_limited` take the caller from the same dependency as the
    user, so a request costs one verification (two RS256 checks with the cache off)."""
    verifier = app.state.services.verifier
    calls: list[str] = []
    verify = verifier.verify

    async def counting(token: str) -> Any:
        calls.append(token)
        return await verify(token)

    monkeypatch.setattr(verifier, "verify", counting)
    for path in ("/v1/api-keys", "/v1/me", "/v1/billing/products"):
        calls.clear()
        response = await client.get(path, headers=auth_headers(ALICE))
        assert response.status_code in (200, 503), (path, response.text)
        assert len(calls) == 1, path
