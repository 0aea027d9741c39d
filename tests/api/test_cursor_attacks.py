"""SQL-shaped, oversized and binary cursors on every listing: always a 400 problem.

The listings are taken from the app's OpenAPI document (every GET with a `cursor` query
parameter), so a new listing is attacked too without anyone adding it here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
USER = "user_cursor_attacker"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _json_cursor(payload: object) -> str:
    return _b64(json.dumps(payload).encode())


def listings() -> list[str]:
    """Every GET operation with a `cursor` query parameter, from the app's route table."""
    app = create_app(Settings(_env_file=None))
    found = []
    for path, item in app.openapi()["paths"].items():
        parameters = item.get("get", {}).get("parameters", [])
        if any(p["name"] == "cursor" and p["in"] == "query" for p in parameters):
            found.append(path)
    return sorted(found)


LISTINGS = listings()

ATTACKS: dict[str, str] = {
    "or-1-1": "' OR 1=1--",
    "union-select": "1 UNION SELECT id, email FROM users--",
    "stacked-drop": "x'; DROP TABLE users; --",
    "b64-sql": _b64(b"' OR 1=1--"),
    "b64-json-sql-in-time": _json_cursor({"t": "' OR 1=1--", "id": "1"}),
    "b64-json-sql-in-id": _json_cursor(
        {"t": "2026-01-01T00:00:00+00:00", "id": "00000000-0000-0000-0000-000000000000' OR '1'='1"}
    ),
    "b64-json-sql-bigint-id": _json_cursor({"id": "1 OR 1=1"}),
    "b64-json-huge-int": _json_cursor({"id": 10**30, "t": "2026-01-01T00:00:00+00:00"}),
    "huge-301": "A" * 301,
    "huge-60k": "A" * 60_000,  # httpx refuses a URL over 64 KiB itself
    "huge-valid-b64": _json_cursor({"t": "2026-01-01T00:00:00+00:00", "id": "x" * 5000}),
    "nul": "\x00",
    "nul-inside": "abc\x00def",
    "b64-nul": _b64(b'{"id": "\x00"}'),
    "b64-json-nul-escape": _json_cursor({"t": "\u0000", "id": "\u0000"}),
    "non-utf8-b64": _b64(b"\xff\xfe\xfd"),
    "deep-json": _b64(b"[" * 200 + b"]" * 200),
}


def test_every_listing_is_attacked() -> None:
    # The listings as of this writing; a new one joins the table by itself.
    assert {
        "/v1/credits/ledger",
        "/v1/jobs",
        "/v1/images",
        "/v1/feed",
        "/v1/prompts",
        "/v1/packs",
        "/v1/webhook-endpoints/{endpoint_id}/deliveries",
    } <= set(LISTINGS)


async def _concrete(client: httpx.AsyncClient, headers: dict[str, str], path: str) -> str:
    """The listing's path with its id filled in: an endpoint of the caller's own (a path
    with a malformed id would be a 422 before its cursor is read)."""
    if "{endpoint_id}" not in path:
        return path
    made = await client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://8.8.8.8/h", "events": ["job.completed"]},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    return path.replace("{endpoint_id}", made.json()["id"])


@pytest.mark.parametrize("path", LISTINGS)
async def test_a_hostile_cursor_is_a_400_problem_on_every_listing(
    client: httpx.AsyncClient, auth_headers: Headers, path: str
) -> None:
    """One database per listing (a clone each is slow), every attack against it."""
    headers = auth_headers(USER)
    path = await _concrete(client, headers, path)
    for name, cursor in ATTACKS.items():
        response = await client.get(path, params={"cursor": cursor}, headers=headers)

        body = assert_problem(response, 400)
        assert body["type"].endswith("/bad-request"), (name, body)
    # The database is untouched and the listing answers as before.
    after = await client.get(path, headers=headers)
    assert after.status_code == 200, after.text
