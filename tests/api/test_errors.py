"""Every error is application/problem+json: unknown routes, wrong methods, validation,
oversize bodies, NUL bytes and unhandled exceptions; never HTML, never a stack trace."""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Query
from PIL import Image
from pydantic import BaseModel

from app.config import Settings
from app.main import create_app
from app.schemas.common import SafeStr
from tests.fakes.running import json_lines, json_logging, running
from tests.support.problems import assert_problem

LIMIT = 2048
SECRET = "s3cr3t-detail-that-must-stay-in-the-logs"


class Note(BaseModel):
    text: SafeStr


def add_test_routes(app: FastAPI, calls: list[str]) -> None:
    """Routes only these tests have: a JSON body, a SafeStr query, and one that crashes."""

    @app.post("/_test/notes", operation_id="test_create_note")
    async def create_note(note: Note) -> dict[str, int]:
        calls.append(note.text)
        return {"length": len(note.text)}

    @app.get("/_test/search", operation_id="test_search")
    async def search(q: Annotated[SafeStr, Query()]) -> dict[str, str]:
        return {"q": q}

    @app.get("/_test/crash", operation_id="test_crash")
    async def crash() -> None:
        raise RuntimeError(SECRET)


@pytest.fixture
def limited_app(make_settings: Callable[..., Settings]) -> tuple[FastAPI, list[str]]:
    app = create_app(make_settings(max_body_bytes=LIMIT))
    calls: list[str] = []
    add_test_routes(app, calls)
    return app, calls


@pytest.fixture
async def limited_client(
    limited_app: tuple[FastAPI, list[str]],
) -> AsyncIterator[httpx.AsyncClient]:
    async with running(limited_app[0]) as client:
        yield client


def note_of_size(size: int) -> bytes:
    """A JSON body of exactly `size` bytes."""
    frame = b'{"text":""}'
    return frame[:9] + b"x" * (size - len(frame)) + frame[9:]


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    for path in ("/nope", "/v1/nope", "/v1/me/extra", "/v1/me/", "/healthz/"):  # no redirect
        body = assert_problem(await client.get(path), 404)
        assert body["title"] == "Not found"
        assert body["detail"] == "There is nothing at this path; see /openapi.json."


async def test_unknown_route_asking_for_html_still_gets_problem_json(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/nope", headers={"Accept": "text/html"})
    assert_problem(response, 404)


async def test_wrong_method_is_a_405_problem_with_an_allow_header(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put("/v1/me")  # /v1/me answers GET and DELETE
    body = assert_problem(response, 405)
    assert body["title"] == "Method not allowed"
    assert "GET" in response.headers["allow"]
    assert_problem(await client.post("/healthz"), 405)


async def test_invalid_query_parameter_is_a_422_problem_listing_the_errors(
    client: httpx.AsyncClient, auth_headers: Callable[..., dict[str, str]]
) -> None:
    response = await client.get(
        "/v1/credits/ledger?limit=abc", headers=auth_headers("user_errors_422")
    )
    body = assert_problem(response, 422)
    assert body["errors"], body
    error = body["errors"][0]
    assert error["loc"] == ["query", "limit"]
    assert error["type"] == "int_parsing"
    assert isinstance(error["msg"], str)
    assert "limit" in body["detail"]
    # Out of range is a validation error too.
    body = assert_problem(
        await client.get("/v1/credits/ledger?limit=0", headers=auth_headers("user_errors_422")),
        422,
    )
    assert body["errors"][0]["loc"] == ["query", "limit"]


async def test_malformed_or_wrong_json_body_is_a_422_problem(
    limited_client: httpx.AsyncClient,
) -> None:
    headers = {"Content-Type": "application/json"}
    body = assert_problem(
        await limited_client.post("/_test/notes", content=b"{nope", headers=headers), 422
    )
    assert body["errors"][0]["type"] == "json_invalid"
    assert body["detail"] == "The body is not valid JSON (near character 1)."
    not_an_object = await limited_client.post("/_test/notes", content=b"[1]", headers=headers)
    assert assert_problem(not_an_object, 422)["detail"] == "The body must be a JSON object."
    body = assert_problem(await limited_client.post("/_test/notes", json={"text": 5}), 422)
    assert body["errors"][0]["loc"] == ["body", "text"]
    body = assert_problem(await limited_client.post("/_test/notes", json={}), 422)
    assert body["errors"][0]["type"] == "missing"


async def test_a_body_in_another_media_type_is_a_415_that_names_the_one_it_takes(
    limited_app: tuple[FastAPI, list[str]], limited_client: httpx.AsyncClient
) -> None:
    sent = {
        "text/plain": "this request has Content-Type: text/plain.",
        "application/x-www-form-urlencoded; charset=utf-8": (
            "this request has Content-Type: application/x-www-form-urlencoded; charset=utf-8."
        ),
        "text/json": "this request has Content-Type: text/json.",
        None: "this request has no Content-Type.",  # FastAPI reads no body as JSON unlabelled
        "x" * 3000: f"this request has Content-Type: {'x' * 100}….",  # the client's text, cut
    }
    for content_type, said in sent.items():
        headers = {"Content-Type": content_type} if content_type else {}
        response = await limited_client.post(
            "/_test/notes", content=b'{"text": "hi"}', headers=headers
        )

        body = assert_problem(response, 415)
        assert body == {
            "type": "https://atelier.dev/problems/unsupported-media-type",
            "title": "Unsupported media type",
            "status": 415,
            "detail": f"The body must be sent as Content-Type: application/json; {said}",
            "accepted": ["application/json"],
        }
        assert response.headers["Accept"] == "application/json"  # RFC 9110 §15.5.16
    assert limited_app[1] == []  # the route never ran
    # JSON under any name that says JSON is read as JSON, and an empty body is missing
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        headers = {"Content-Type": content_type}
        ok = await limited_client.post("/_test/notes", content=b'{"text": "hi"}', headers=headers)
        assert ok.status_code == 200, ok.text
    missing = assert_problem(await limited_client.post("/_test/notes"), 422)
    assert missing["errors"][0]["type"] == "missing"


async def test_lengths_are_told_in_the_senders_terms_characters_for_text_items_for_lists(
    client: httpx.AsyncClient, auth_headers: Callable[..., dict[str, str]]
) -> None:
    headers = auth_headers("user_errors_lengths")
    long_prompt = await client.post("/v1/generations", json={"prompt": "a" * 3000}, headers=headers)
    body = assert_problem(long_prompt, 422)
    assert body["detail"] == "prompt: at most 2,000 characters (got 3,000)"
    assert body["errors"] == [
        {
            "loc": ["body", "prompt"],
            "msg": "at most 2,000 characters (got 3,000)",
            "type": "too_long",
        }
    ]
    long_text = await client.post("/v1/prompts", json={"prompt_text": "é" * 2001}, headers=headers)
    assert assert_problem(long_text, 422)["detail"] == (
        "prompt_text: at most 2,000 characters (got 2,001)"
    )
    empty = await client.post("/v1/generations", json={"prompt": ""}, headers=headers)
    assert assert_problem(empty, 422)["detail"] == "prompt: must not be blank"
    many = await client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://example.com/h", "events": ["job.completed"] * 3},
        headers=headers,
    )
    assert assert_problem(many, 422)["detail"] == "events: at most 2 items (got 3)"
    # Outside the body, the parameter says where it was.
    limit = await client.get("/v1/credits/ledger?limit=0", headers=headers)
    assert assert_problem(limit, 422)["detail"].startswith("limit (query parameter): ")


async def test_body_over_the_limit_is_a_413_problem_and_never_reaches_the_route(
    limited_app: tuple[FastAPI, list[str]], limited_client: httpx.AsyncClient
) -> None:
    _, calls = limited_app
    content = note_of_size(LIMIT + 1)
    response = await limited_client.post(
        "/_test/notes", content=content, headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 413)
    assert body["title"] == "Payload too large"
    assert body["detail"] == "The request body may be at most 2048 bytes (2 KiB), MAX_BODY_BYTES."
    assert body["limit"] == LIMIT
    assert response.headers["x-request-id"]
    # A far larger one.
    huge = {"Content-Type": "application/json"}
    assert_problem(
        await limited_client.post("/_test/notes", content=b"x" * 2_000_000, headers=huge), 413
    )
    assert calls == []


async def test_chunked_body_over_the_limit_is_a_413_problem(
    limited_app: tuple[FastAPI, list[str]], limited_client: httpx.AsyncClient
) -> None:
    _, calls = limited_app
    content = note_of_size(LIMIT * 4)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 1000):
            yield content[start : start + 1000]

    request = limited_client.build_request(
        "POST", "/_test/notes", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    body = assert_problem(await limited_client.send(request), 413)
    assert str(LIMIT) in body["detail"]
    assert calls == []


async def test_body_of_exactly_the_limit_is_accepted_declared_or_chunked(
    limited_app: tuple[FastAPI, list[str]], limited_client: httpx.AsyncClient
) -> None:
    _, calls = limited_app
    content = note_of_size(LIMIT)
    assert len(content) == LIMIT
    headers = {"Content-Type": "application/json"}
    response = await limited_client.post("/_test/notes", content=content, headers=headers)
    assert response.status_code == 200, response.text

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 500):
            yield content[start : start + 500]

    response = await limited_client.post("/_test/notes", content=chunks(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"length": LIMIT - len(b'{"text":""}')}
    assert len(calls) == 2


def noisy_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 * side**2 bytes."""
    image = Image.frombytes("RGB", (side, side), random.Random(side).randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def test_uploads_have_their_own_larger_body_limit(
    make_settings: Callable[..., Settings], auth_headers: Callable[..., dict[str, str]]
) -> None:
    upload_limit = 256 * 1024
    app = create_app(make_settings(max_body_bytes=LIMIT, max_upload_bytes=upload_limit))
    headers = auth_headers("user_errors_upload")
    png = noisy_png(64)
    assert LIMIT < len(png) < upload_limit
    async with running(app) as client:
        response = await client.post(
            "/v1/uploads", files={"file": ("x.png", png, "image/png")}, headers=headers
        )
        assert response.status_code == 201, response.text
        # Past the upload limit plus room for the multipart framing: the body limit answers,
        # naming the upload limit (the setting), not the framing allowance.
        big = b"x" * (upload_limit + 64 * 1024 + 1)
        response = await client.post(
            "/v1/uploads", files={"file": ("x.png", big, "image/png")}, headers=headers
        )
        body = assert_problem(response, 413)
        assert (body["detail"], body["limit"]) == (
            "Uploads may be at most 262144 bytes (256 KiB), MAX_UPLOAD_BYTES.",
            upload_limit,
        )
        # Every other route keeps the app-wide limit.
        json_headers = {**headers, "Content-Type": "application/json"}
        content = b"x" * (LIMIT + 1)
        response = await client.post("/v1/generations", content=content, headers=json_headers)
        assert_problem(response, 413)


async def test_unhandled_exception_is_a_500_problem_without_a_traceback_but_logged(
    limited_app: tuple[FastAPI, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    app, _ = limited_app
    async with running(app, raise_app_exceptions=False) as client:
        capsys.readouterr()
        with json_logging():
            response = await client.get("/_test/crash", headers={"X-Request-ID": "crash-1"})
        logged = json_lines(capsys.readouterr().err)
    body = assert_problem(response, 500)
    assert SECRET not in response.text
    assert "RuntimeError" not in response.text
    assert 'File "' not in response.text
    assert body["title"] == "Internal Server Error"
    assert response.headers["x-request-id"] == "crash-1"
    # The details are in the log, under the same request id.
    errors = [e for e in logged if e["logger"] == "atelier.errors"]
    assert len(errors) == 1, logged
    assert errors[0]["request_id"] == "crash-1"
    assert errors[0]["level"] == "error"
    assert SECRET in errors[0]["exc"] and "Traceback" in errors[0]["exc"]
    access = [e for e in logged if e["logger"] == "atelier.access"]
    assert [(e["status"], e["request_id"]) for e in access] == [(500, "crash-1")]


async def test_nul_byte_in_a_query_parameter_is_a_4xx_problem(
    client: httpx.AsyncClient, auth_headers: Callable[..., dict[str, str]]
) -> None:
    headers = auth_headers("user_errors_nul")
    for query, status in (
        ("cursor=%00", 400),
        ("cursor=abc%00def", 400),
        ("limit=%00", 422),
        ("limit=1%00", 422),
    ):
        response = await client.get(f"/v1/credits/ledger?{query}", headers=headers)
        assert_problem(response, status)


async def test_nul_byte_in_headers_or_path_is_never_a_500(
    client: httpx.AsyncClient, auth_headers: Callable[..., dict[str, str]]
) -> None:
    token = auth_headers("user_errors_nul_header")["Authorization"]
    assert_problem(await client.get("/v1/me", headers={"Authorization": "Bearer \x00"}), 401)
    assert_problem(await client.get("/v1/me", headers={"Authorization": token + "\x00"}), 401)
    assert_problem(await client.get("/v1/me%00"), 404)
    response = await client.get(
        "/v1/me", headers={**auth_headers("user_errors_nul_header"), "X-Request-ID": "a\x00b"}
    )
    assert response.status_code == 200, response.text
    assert "\x00" not in response.headers["x-request-id"]


async def test_nul_byte_in_a_token_claim_is_a_4xx_problem_not_a_500(
    client: httpx.AsyncClient, dev_token: Callable[..., str]
) -> None:
    # A signed token whose subject or email PostgreSQL cannot store.
    for user_id, email in (("user_\x00nul", None), ("user_nul_email", "nul\x00@example.test")):
        headers = {"Authorization": f"Bearer {dev_token(user_id, email)}"}
        response = await client.get("/v1/me", headers=headers)
        assert 400 <= response.status_code < 500, response.text
        assert_problem(response, response.status_code)
    # The connection that hit the error is healthy afterwards.
    ok = await client.get("/v1/me", headers={"Authorization": f"Bearer {dev_token('user_fine')}"})
    assert ok.status_code == 200, ok.text


async def test_nul_byte_or_lone_surrogate_in_safe_text_is_a_422_problem(
    limited_app: tuple[FastAPI, list[str]], limited_client: httpx.AsyncClient
) -> None:
    _, calls = limited_app
    body = assert_problem(await limited_client.get("/_test/search", params={"q": "a\x00b"}), 422)
    assert body["errors"][0]["loc"] == ["query", "q"]
    headers = {"Content-Type": "application/json"}
    for raw in (b'{"text": "a\\u0000b"}', b'{"text": "a\\ud800b"}'):
        response = await limited_client.post("/_test/notes", content=raw, headers=headers)
        body = assert_problem(response, 422)
        assert body["errors"][0]["loc"] == ["body", "text"]
    assert calls == []
    ok = await limited_client.get("/_test/search", params={"q": "caf\u00e9 \U0001f600"})
    assert ok.json() == {"q": "caf\u00e9 \U0001f600"}
