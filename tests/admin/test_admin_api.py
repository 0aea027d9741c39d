"""The admin routes: only ADMIN_USER_IDS get in (everyone else 403, no token 401); credit
adjustments go through the ledger and never overdraw; one user's account; usage statistics
against a seeded dataset; takedown of anyone's image."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from app.config import Settings
from app.errors import InsufficientCredits
from app.services import accounts, credits
from app.services.storage.base import Storage
from tests.admin.conftest import ADMIN
from tests.support.generations import add_user, create_job
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
USER, OTHER = "user_adm_target", "user_adm_other"


async def admin_routes(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    """Every admin operation, from the OpenAPI document (so a new one is checked too)."""
    document = (await client.get("/openapi.json")).json()
    found = [
        (method.upper(), path)
        for path, item in document["paths"].items()
        if path.startswith("/v1/admin")
        for method in item
    ]
    return sorted(found)


def concrete(path: str) -> str:
    return path.replace("{user_id}", USER).replace("{image_id}", str(uuid.uuid4()))


async def adjust(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    delta: int,
    reason: str = "support ticket 42",
    user_id: str = USER,
    **extra: str,
) -> httpx.Response:
    return await client.post(
        f"/v1/admin/users/{user_id}/credits",
        json={"delta": delta, "reason": reason},
        headers={**headers, **extra},
    )


async def balance(db: asyncpg.Connection, user_id: str = USER) -> int:
    value = await db.fetchval("SELECT credits FROM users WHERE id = $1", user_id)
    assert value is not None
    return int(value)


async def assert_ledger_clean(db: asyncpg.Connection) -> None:
    bad, unopened = await credits.check(db)
    assert [dict(r) for r in bad] == [] and unopened == 0


# -- who may ------------------------------------------------------------------------------


async def test_every_admin_route_is_403_for_a_non_admin_and_401_without_a_token(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    routes = await admin_routes(client)
    assert routes == [
        ("DELETE", "/v1/admin/images/{image_id}"),
        ("GET", "/v1/admin/stats"),
        ("GET", "/v1/admin/users/{user_id}"),
        ("POST", "/v1/admin/users/{user_id}/credits"),
    ]
    await add_user(app.state.services.pool, USER, 5)
    for method, path in routes:
        body = {"delta": 5, "reason": "x"} if method == "POST" else None
        refused = await client.request(
            method, concrete(path), json=body, headers=auth_headers(OTHER)
        )
        assert_problem(refused, 403)
        anonymous = await client.request(method, concrete(path), json=body)
        assert_problem(anonymous, 401)
    assert await balance(db) == 5  # the refused POST changed nothing


# -- credit adjustments -------------------------------------------------------------------


async def test_adjustments_add_take_reach_zero_and_never_go_below_zero(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await add_user(app.state.services.pool, USER, 5)
    admin = auth_headers(ADMIN)

    added = await adjust(client, admin, 10, "goodwill after an outage")
    assert added.status_code == 200, added.text
    assert added.json() == {"user_id": USER, "delta": 10, "balance": 15, "applied": True}
    taken = await adjust(client, admin, -5)
    assert taken.json()["balance"] == 10
    emptied = await adjust(client, admin, -10)
    assert emptied.json()["balance"] == 0
    assert await balance(db) == 0

    below = await adjust(client, admin, -1)
    problem = assert_problem(below, 409)
    assert problem["balance"] == 0
    assert await balance(db) == 0

    rows = await db.fetch(
        "SELECT delta, reason, source_id, note, balance_after FROM credit_ledger"
        " WHERE user_id = $1 AND reason = 'admin' ORDER BY id",
        USER,
    )
    assert [(r["delta"], r["balance_after"]) for r in rows] == [(10, 15), (-5, 10), (-10, 0)]
    assert rows[0]["note"] == "goodwill after an outage"
    assert all(r["source_id"].startswith(f"admin:{ADMIN}:") for r in rows)
    assert len({r["source_id"] for r in rows}) == 3
    await assert_ledger_clean(db)


async def test_an_adjustment_retried_with_its_idempotency_key_is_applied_once(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await add_user(app.state.services.pool, USER, 5)
    admin = auth_headers(ADMIN)
    first = await adjust(client, admin, 3, **{"Idempotency-Key": "ticket-42"})
    again = await adjust(client, admin, 3, **{"Idempotency-Key": "ticket-42"})
    assert first.json() == {"user_id": USER, "delta": 3, "balance": 8, "applied": True}
    assert again.json() == {"user_id": USER, "delta": 3, "balance": 8, "applied": False}
    assert await balance(db) == 8


async def test_an_idempotency_key_reused_for_another_adjustment_is_422_not_a_silent_no_op(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    pool = app.state.services.pool
    await add_user(pool, USER, 5)
    await add_user(pool, OTHER, 5)
    admin = auth_headers(ADMIN)
    first = await adjust(client, admin, 3, **{"Idempotency-Key": "ticket-7"})
    assert first.json() == {"user_id": USER, "delta": 3, "balance": 8, "applied": True}

    # The key of the first adjustment sent with another user, delta or reason: a script or a
    # support tool reusing a key must not be told 200 with the other user's balance and the
    # delta it asked for while nothing happened.
    elsewhere = await adjust(client, admin, 3, user_id=OTHER, **{"Idempotency-Key": "ticket-7"})
    assert_problem(elsewhere, 422)
    more = await adjust(client, admin, 30, **{"Idempotency-Key": "ticket-7"})
    assert_problem(more, 422)
    reworded = await adjust(client, admin, 3, "another ticket", **{"Idempotency-Key": "ticket-7"})
    assert_problem(reworded, 422)
    assert await balance(db) == 8 and await balance(db, OTHER) == 5

    # The same key and body still answer the first result.
    again = await adjust(client, admin, 3, **{"Idempotency-Key": "ticket-7"})
    assert again.json() == {"user_id": USER, "delta": 3, "balance": 8, "applied": False}
    await assert_ledger_clean(db)


async def test_bad_adjustments_are_problems_and_change_nothing(
    app: FastAPI, client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await add_user(app.state.services.pool, USER, 5)
    admin = auth_headers(ADMIN)
    assert_problem(await adjust(client, admin, 5, user_id="user_nobody"), 404)
    assert_problem(await adjust(client, admin, 0), 422)
    assert_problem(await adjust(client, admin, 5, reason="   "), 422)
    assert_problem(await adjust(client, admin, 5, reason="x" * 501), 422)
    assert_problem(await adjust(client, admin, 10_000_000), 422)
    for not_a_number in ("5", True):  # lax pydantic reads both as credits
        response = await client.post(
            f"/v1/admin/users/{USER}/credits",
            json={"delta": not_a_number, "reason": "a number?"},
            headers=admin,
        )
        assert_problem(response, 422)
    bad_key = await adjust(client, admin, 5, **{"Idempotency-Key": "no spaces allowed"})
    assert_problem(bad_key, 400)
    doubled = await client.post(
        f"/v1/admin/users/{USER}/credits",
        json={"delta": 5, "reason": "twice"},
        headers=[*admin.items(), ("Idempotency-Key", "t-1"), ("Idempotency-Key", "t-2")],
    )
    assert assert_problem(doubled, 400)["header"] == "Idempotency-Key"
    assert await balance(db) == 5
    assert await db.fetchval("SELECT count(*) FROM credit_ledger WHERE reason = 'admin'") == 0

    services = app.state.services
    await accounts.erase(services.pool, services.storage, services.users, USER, None)
    assert_problem(await adjust(client, admin, 5), 404)  # an erased account gets nothing
    detail = await client.get(f"/v1/admin/users/{USER}", headers=admin)
    assert detail.json()["erased_at"] is not None and detail.json()["credits"] == 0


async def test_concurrent_adjustments_and_spends_never_overdraw(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth_headers: Headers,
    db: asyncpg.Connection,
    settings: Settings,
    storage: Storage,
) -> None:
    pool = app.state.services.pool
    user = await add_user(pool, USER, 10)
    admin = auth_headers(ADMIN)

    async def take_one() -> bool:
        response = await adjust(client, admin, -1)
        assert response.status_code in (200, 409), response.text
        return response.status_code == 200

    async def spend_one() -> bool:
        try:
            _, created = await create_job(pool, settings, storage, user)
        except InsufficientCredits:
            return False
        return created

    async def give_two() -> bool:
        response = await adjust(client, admin, 2)
        assert response.status_code == 200, response.text
        return False

    work = [take_one() for _ in range(12)] + [spend_one() for _ in range(12)]
    work += [give_two() for _ in range(3)]
    outcomes = await asyncio.gather(*work)
    final = await balance(db)
    assert final >= 0
    assert final == 10 + 6 - sum(outcomes)
    # every credit there was at the start was taken (nothing lost to a race), and at most
    # what was given on top
    assert 10 <= sum(outcomes) <= 16
    assert await db.fetchval("SELECT min(balance_after) FROM credit_ledger") >= 0
    await assert_ledger_clean(db)


# -- one user -----------------------------------------------------------------------------


async def test_user_detail_shows_profile_balance_subscription_ledger_and_jobs(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth_headers: Headers,
    db: asyncpg.Connection,
    settings: Settings,
    storage: Storage,
) -> None:
    pool = app.state.services.pool
    user = await add_user(pool, USER, 5)
    job, _ = await create_job(pool, settings, storage, user, "a copper kettle")
    await db.execute(
        "INSERT INTO subscriptions (user_id, status, price_id) VALUES ($1, 'Pro', 'price_pro')",
        USER,
    )
    await adjust(client, auth_headers(ADMIN), 2, "welcome back")

    response = await client.get(f"/v1/admin/users/{USER}", headers=auth_headers(ADMIN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == USER and body["email"] == f"{USER}@example.test"
    assert body["credits"] == 6 and body["erased_at"] is None
    assert body["subscription"]["status"] == "Pro"
    assert [(e["reason"], e["delta"]) for e in body["ledger"]] == [
        ("admin", 2),
        ("generate", -1),
        ("signup", 5),
    ]
    assert [j["id"] for j in body["jobs"]] == [str(job["id"])]
    assert body["jobs"][0]["prompt"] == "a copper kettle"

    missing = await client.get("/v1/admin/users/user_nobody", headers=auth_headers(ADMIN))
    assert_problem(missing, 404)


# -- statistics ---------------------------------------------------------------------------


async def seed_usage(db: asyncpg.Connection) -> None:
    """Three recent users (one erased), one from long ago; jobs and ledger rows inside and
    outside a 7-day window."""
    now = datetime.now(UTC)
    recent, old = now - timedelta(days=2), now - timedelta(days=30)
    for user_id, created in (
        ("user_s_a", recent),
        ("user_s_b", recent),
        ("user_s_c", recent),
        ("user_s_old", old),
    ):
        await db.execute(
            "INSERT INTO users (id, email, credits, created_at) VALUES ($1, $2, 0, $3)",
            user_id,
            f"{user_id}@example.test",
            created,
        )
    await db.execute("UPDATE users SET erased_at = $1 WHERE id = 'user_s_c'", recent)
    jobs = [
        ("user_s_a", "completed", "gemini-a", recent),
        ("user_s_a", "completed", "gemini-a", recent),
        ("user_s_a", "completed", "gemini-b", recent),
        ("user_s_b", "failed", "gemini-a", recent),
        ("user_s_b", "failed", None, recent),
        ("user_s_b", "pending", None, recent),
        ("user_s_old", "completed", "gemini-a", old),
        ("user_s_old", "failed", "gemini-b", old),
    ]
    for user_id, status, model, created in jobs:
        await db.execute(
            "INSERT INTO image_generation_jobs (user_id, status, kind, model, created_at)"
            " VALUES ($1, $2, 'generate', $3, $4)",
            user_id,
            status,
            model,
            created,
        )
    ledger = [
        ("user_s_a", 5, "signup", recent),
        ("user_s_a", -1, "generate", recent),
        ("user_s_a", -1, "generate", recent),
        ("user_s_a", -2, "style", recent),
        ("user_s_b", -1, "generate", recent),
        ("user_s_b", 1, "refund", recent),
        ("user_s_b", 100, "purchase", recent),
        ("user_s_b", 50, "subscription_grant", recent),
        ("user_s_a", 7, "admin", recent),
        ("user_s_old", -1, "generate", old),
        ("user_s_old", 20, "purchase", old),
    ]
    for user_id, delta, reason, created in ledger:
        await db.execute(
            "INSERT INTO credit_ledger (user_id, delta, reason, job_id, balance_after, created_at)"
            " VALUES ($1, $2, $3, CASE WHEN $3 IN ('generate', 'style', 'refund')"
            " THEN gen_random_uuid() END, 1000, $4)",
            user_id,
            delta,
            reason,
            created,
        )


async def test_stats_count_a_seeded_dataset_exactly(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    await seed_usage(db)
    admin = auth_headers(ADMIN)
    await client.get("/v1/me", headers=admin)  # the administrator signs up: one more user

    response = await client.get("/v1/admin/stats", params={"days": 7}, headers=admin)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["users"] == {"total": 4, "signups": 4, "erased": 1}
    jobs = body["jobs"]
    assert jobs["total"] == 6
    assert jobs["by_status"] == {"completed": 3, "failed": 2, "pending": 1}
    assert jobs["by_model"] == {"gemini-a": 3, "gemini-b": 1, "none": 2}
    assert {(c["status"], c["model"], c["count"]) for c in jobs["by_status_and_model"]} == {
        ("completed", "gemini-a", 2),
        ("completed", "gemini-b", 1),
        ("failed", "gemini-a", 1),
        ("failed", None, 1),
        ("pending", None, 1),
    }
    # debited 1+1+2+1 = 5, one refunded; sold 100 + 50; the admin's +7
    assert body["credits"] == {"spent": 4, "refunded": 1, "sold": 150, "admin_net": 7}
    assert body["failure_rate"] == round(2 / 5, 4)
    assert body["refund_rate"] == round(1 / 4, 4)

    whole = await client.get(
        "/v1/admin/stats",
        params={"since": (datetime.now(UTC) - timedelta(days=60)).isoformat()},
        headers=admin,
    )
    assert whole.status_code == 200, whole.text
    assert whole.json()["users"]["signups"] == 5
    assert whole.json()["jobs"]["total"] == 8
    assert whole.json()["credits"]["sold"] == 170


async def test_stats_window_is_validated(client: httpx.AsyncClient, auth_headers: Headers) -> None:
    admin = auth_headers(ADMIN)
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    windows: list[dict[str, str | int]] = [
        {"days": 0},
        {"days": 367},
        {"days": "week"},
        {"since": "yesterday"},
        {"since": future},
        {"since": "2026-11-01T00:00:00"},  # no time zone
        {"since": "2020-01-01T00:00:00Z"},  # beyond the longest window
        {"days": 7, "since": "2026-11-29T00:00:00Z"},
    ]
    for params in windows:
        response = await client.get("/v1/admin/stats", params=params, headers=admin)
        assert_problem(response, 422)
    empty = await client.get("/v1/admin/stats", headers=admin)
    assert empty.status_code == 200, empty.text
    assert empty.json()["failure_rate"] is None and empty.json()["refund_rate"] is None
