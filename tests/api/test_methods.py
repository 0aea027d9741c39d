"""Methods as HTTP says: a 405's `Allow` names every method of the path, and HEAD is answered
wherever GET is (the GET's status and headers, no body)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from app.config import Settings
from app.main import create_app
from tests.support.live import live_server
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]


async def test_a_405_allows_every_method_the_path_has(client: httpx.AsyncClient) -> None:
    cases = {
        "/v1/me": "DELETE, GET, HEAD",
        "/v1/prompts": "GET, HEAD, POST",
        "/v1/images/00000000-0000-0000-0000-000000000001": "DELETE, GET, HEAD, PATCH",
        "/v1/images/00000000-0000-0000-0000-000000000001/like": "DELETE, PUT",
        "/webhooks/stripe": "POST",
    }
    for path, allowed in cases.items():
        response = await client.request("OPTIONS", path)
        assert_problem(response, 405)
        assert response.headers["allow"] == allowed, path


async def test_head_answers_like_get_without_a_body(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers("user_head")
    for path in ("/healthz", "/openapi.json", "/v1/me", "/v1/jobs", "/docs"):
        got = await client.get(path, headers=headers)
        head = await client.head(path, headers=headers)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    # Errors too: the GET's status, no body.
    assert (await client.head("/v1/me")).status_code == 401
    missing = await client.head("/v1/jobs/00000000-0000-0000-0000-000000000001", headers=headers)
    assert missing.status_code == 404
    assert missing.content == b""


async def test_head_of_a_stream_ends_at_once(settings: Settings, auth_headers: Headers) -> None:
    """A HEAD of the feed (a stream that never ends) answers its head and is over."""
    app = create_app(settings)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.head("/v1/feed/events", headers=auth_headers("user_head"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.content == b""
