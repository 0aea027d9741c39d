"""A first request racing the mobile app's own insert of the same user."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import httpx

from app.db import ledger
from tests.support.locks import until_a_lock_wait

Headers = Callable[..., dict[str, str]]


async def test_a_user_the_mobile_app_inserts_during_the_first_request_gets_an_opening_balance(
    client: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection, db_url: str
) -> None:
    mobile = await asyncpg.connect(db_url)
    try:
        tx = mobile.transaction()
        await tx.start()
        await mobile.execute(
            "INSERT INTO users (id, email, credits) VALUES ($1, $2, 7)",
            "user_raced",
            "raced@example.test",
        )
        # The service does not see the uncommitted row, so it inserts too and waits for it.
        first = asyncio.create_task(
            client.get("/v1/me", headers=auth_headers("user_raced", "raced@example.test"))
        )
        try:
            await until_a_lock_wait(db, "the service's insert to wait for the mobile app's", first)
        finally:
            await tx.commit()
        response = await first
    finally:
        await mobile.close()
    assert response.status_code == 200, response.text
    assert response.json()["credits"] == 7
    rows = await db.fetch(
        "SELECT reason, delta, balance_after FROM credit_ledger WHERE user_id = 'user_raced'"
    )
    assert [tuple(r) for r in rows] == [("opening_balance", 7, 7)]

    # Its ledger explains its balance once it starts spending.
    spent = await client.post(
        "/v1/generations",
        json={"prompt": "a lighthouse"},
        headers=auth_headers("user_raced", "raced@example.test"),
    )
    assert spent.status_code in (200, 202), spent.text
    assert [r["id"] for r in await ledger.mismatches(db)] == []
