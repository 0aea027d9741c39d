from __future__ import annotations

from collections.abc import Callable

import httpx


async def test_new_user_sees_signup_credits(
    client: httpx.AsyncClient, auth_headers: Callable[..., dict[str, str]]
) -> None:
    response = await client.get("/v1/me", headers=auth_headers("user_smoke"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "user_smoke"
    assert body["credits"] == 5
    assert body["subscription"] is None
    ledger = await client.get("/v1/credits/ledger", headers=auth_headers("user_smoke"))
    assert ledger.status_code == 200
    assert [e["reason"] for e in ledger.json()["items"]] == ["signup"]
