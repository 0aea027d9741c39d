"""Production hardening: what ENV=production refuses (all of it in one message), /metrics
behind a token or on a port of its own, security headers on every kind of answer, and
bodies that are not JSON answered with the project's own problem types."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from app.config import Settings
from app.errors import PROBLEM_BASE
from app.headers import API_CSP, DOCS_CSP, DOCS_STATIC_URL
from app.main import create_app
from tests.fakes.running import running
from tests.support.documented import assert_documented_headers
from tests.support.polling import wait_until
from tests.support.problems import assert_problem
from tests.support.serve import free_port

Headers = Callable[..., dict[str, str]]
USER = "user_hardening"
WEB_APP = "https://app.atelier.test"  # an origin CORS allows


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """The caller is an administrator too, so the admin routes reach their body parsing
    (for anyone else they answer 403 before reading the body)."""
    return make_settings(admin_user_ids=[USER])


TOKEN = "metrics-token-for-tests"


# -- ENV=production --------------------------------------------------------------------------


def test_production_names_every_refused_setting_in_one_message() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, env="production")  # every default is a dev default

    message = str(caught.value)
    for expected in (
        "AUTH=dev",
        "DATABASE_URL",
        "PROVIDER=local",
        "STORAGE=local",
        "METRICS_TOKEN or METRICS_PORT",
    ):
        assert expected in message, message
    assert caught.value.error_count() == 1  # one error naming them all, not one per start


def _production(**changes: Any) -> Settings:
    fields: dict[str, Any] = {
        "env": "production",
        "auth": "clerk",
        "clerk_issuer": "https://clerk.atelier.test",
        "database_url": "postgresql://atelier@127.0.0.1:1/atelier",
        "provider": "gemini",
        "gemini_api_key": "key",
        "storage": "r2",
        "r2_endpoint": "https://r2.atelier.test",
        "r2_bucket_name": "atelier",
        "r2_access_key_id": "id",
        "r2_secret_access_key": "secret",
        "metrics_token": TOKEN,
    }
    fields.update(changes)
    return Settings(_env_file=None, **fields)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"storage": "local"}, "STORAGE=local"),
        ({"metrics_token": None}, "METRICS_TOKEN or METRICS_PORT"),
        ({"auth": "dev"}, "AUTH=dev"),
        ({"database_url": None}, "DATABASE_URL"),
        ({"provider": "local"}, "PROVIDER=local"),
        ({"storage": "local", "provider": "local"}, "STORAGE=local; PROVIDER"),
    ],
    ids=["local-storage", "open-metrics", "dev-auth", "embedded-db", "local-provider", "two"],
)
def test_production_refuses_each_unsafe_setting(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _production(**changes)
    for part in named.split("; "):
        assert part in str(caught.value)


def test_production_accepts_a_complete_configuration_with_a_token_or_a_port() -> None:
    assert _production().metrics_token is not None
    assert _production(metrics_token=None, metrics_port=9100).metrics_port == 9100


# -- /metrics ---------------------------------------------------------------------------------


async def test_metrics_need_the_token_when_one_is_set(
    make_settings: Callable[..., Settings],
) -> None:
    async with running(create_app(make_settings(metrics_token=TOKEN))) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        prefix = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN[:-1]}"})
        right = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert_problem(missing, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_problem(wrong, 401)
    assert_problem(prefix, 401)
    assert right.status_code == 200, right.text
    assert "atelier_http_request_duration_seconds" in right.text


async def test_metrics_are_open_without_a_token_outside_production(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200


async def test_metrics_port_serves_them_without_a_token_and_the_api_port_does_not(
    make_settings: Callable[..., Settings],
) -> None:
    port = free_port()
    settings = make_settings(metrics_port=port, metrics_token=TOKEN)
    async with running(create_app(settings)) as client:
        await client.get("/healthz")
        on_api = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        async with httpx.AsyncClient() as outside:
            own = await outside.get(f"http://127.0.0.1:{port}/metrics")

    assert_problem(on_api, 404)
    assert own.status_code == 200, own.text
    assert 'atelier_http_request_duration_seconds_count{method="GET",route="/healthz"' in own.text

    async def closed() -> bool:
        try:
            async with httpx.AsyncClient() as outside:
                await outside.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
        except httpx.ConnectError:
            return True
        return False

    await wait_until(closed, "the metrics port to close with the app")


# -- security headers --------------------------------------------------------------------------


def assert_secure(response: httpx.Response, csp: str = API_CSP, hsts: bool = False) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff", response.url
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"] == csp
    assert len(headers.get_list("x-content-type-options")) == 1
    assert ("strict-transport-security" in headers) == hsts, response.url


@pytest.fixture
async def crash_client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(max_body_bytes=2048, cors_origins=[WEB_APP]))

    @app.get("/_test/crash", operation_id="test_crash_headers")
    async def crash() -> None:
        raise RuntimeError("boom")

    async with running(app, raise_app_exceptions=False) as client:
        yield client


async def test_every_kind_of_answer_carries_the_security_headers(
    crash_client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    client, headers = crash_client, auth_headers(USER)
    job = await client.post(
        "/v1/generations", json={"prompt": "a lamp"}, headers={**headers, "Prefer": "wait=10"}
    )
    assert job.json()["status"] == "completed", job.text
    link = await client.get(
        f"/v1/images/{job.json()['image']['id']}/download?redirect=false", headers=headers
    )
    file_url = httpx.URL(link.json()["url"])
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    answers = {
        "json": await client.get("/v1/me", headers=headers),
        "health": await client.get("/healthz"),
        "openapi": await client.get("/openapi.json"),
        "created": job,
        "redirect": await client.get(f"/v1/images/{job.json()['image']['id']}/download"),
        "404": await client.get("/v1/nope"),
        "401": await client.get("/v1/me"),
        "405": await client.delete("/healthz"),
        "413": await client.post("/v1/prompts", content=b"x" * 4096, headers=headers),
        "422": await client.post("/v1/prompts", json={}, headers=headers),
        "500": await client.get("/_test/crash"),
        "sse": await client.get(f"/v1/jobs/{job.json()['id']}/events", headers=headers),
        "file": await client.get(f"{file_url.path}?{file_url.query.decode()}"),
        "file-403": await client.get(f"{file_url.path}?exp=1&sig=00"),
        # CORS answers these itself, before any route.
        "preflight": await client.options("/v1/me", headers={**preflight, "Origin": WEB_APP}),
        "preflight-400": await client.options(
            "/v1/me", headers={**preflight, "Origin": "https://evil.test"}
        ),
    }
    for name, response in answers.items():
        assert response.status_code < 600, name
        assert_secure(response)
        assert response.headers.get("x-request-id"), name
    assert answers["sse"].headers["content-type"].startswith("text/event-stream")
    assert answers["file"].headers["content-type"] == "image/png"
    assert answers["500"].status_code == 500
    assert answers["preflight"].status_code == 200
    assert answers["preflight"].headers["access-control-allow-origin"] == WEB_APP
    assert answers["preflight-400"].status_code == 400


async def test_docs_load_their_assets_from_this_service_only(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert_secure(response, csp=DOCS_CSP)
        # Every asset the page names is served here: no CDN, so /docs works offline.
        assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
        for asset in assets:
            assert asset.startswith(DOCS_STATIC_URL + "/"), (path, asset)
            loaded = await client.get(asset)
            assert loaded.status_code == 200, asset
            assert len(loaded.content) > 1000, asset
        assert "https://" not in response.text.replace("https://atelier.dev", ""), path
    docs = (await client.get("/docs")).text
    assert f"{DOCS_STATIC_URL}/swagger-ui-bundle.js" in docs
    assert f"{DOCS_STATIC_URL}/redoc.standalone.js" in (await client.get("/redoc")).text
    assert "script-src 'self' 'unsafe-inline';" in DOCS_CSP
    assert "https:" not in DOCS_CSP


async def test_hsts_only_in_production() -> None:
    app = create_app(_production())
    transport = httpx.ASGITransport(app=app)  # no lifespan: /healthz needs none
    async with httpx.AsyncClient(transport=transport, base_url="https://atelier.test") as client:
        response = await client.get("/healthz")
        missing = await client.get("/v1/nope")
    assert_secure(response, hsts=True)
    assert_secure(missing, hsts=True)
    assert "max-age=" in response.headers["strict-transport-security"]


# -- bodies that are not JSON ------------------------------------------------------------------

DEEP = 10_000
BODIES: dict[str, tuple[bytes, str | None]] = {
    "malformed": (b'{"prompt": "a cat",', "application/json"),
    "deep-array": (b"[" * DEEP + b"]" * DEEP, "application/json"),
    "deep-object": (b'{"a":' * DEEP + b"1" + b"}" * DEEP, "application/json"),
    "invalid-utf8": (b'{"prompt": "\xff\xfe a cat"}', "application/json"),
    "utf16-garbage": (b"\xff\xfe{\x00", "application/json"),
    "text-plain": (b'{"prompt": "a cat"}', "text/plain"),
    "form": (b"prompt=a+cat", "application/x-www-form-urlencoded"),
    "no-content-type": (b'{"prompt": "a cat"}', None),
    "empty": (b"", "application/json"),
    "json-null": (b"null", "application/json"),
    "json-array": (b'["a cat"]', "application/json"),
    "nan": (b'{"prompt": NaN}', "application/json"),
    # JSON, but a JSON Patch (RFC 6902): a list of operations, which no PATCH takes
    "json-patch": (
        b'[{"op": "replace", "path": "/prompt", "value": "a cat"}]',
        "application/json-patch+json",
    ),
}


# Sent as something other than JSON: a 415 that names what each operation takes.
NOT_LABELLED_JSON = {"text-plain", "form", "no-content-type"}
# A patch format other than the JSON object a PATCH takes: its 415 too.
NOT_A_MERGE_PATCH = {"json-patch"}


def json_routes() -> list[tuple[str, str, str, bool]]:
    """(method, path, the path with ids filled in at random, body required) of every
    operation that takes a JSON body."""
    app = create_app(Settings(_env_file=None))
    found = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                filled = path
                while "{" in filled:
                    start, end = filled.index("{"), filled.index("}")
                    filled = filled[:start] + str(uuid.uuid4()) + filled[end + 1 :]
                required = bool(operation["requestBody"].get("required", False))
                found.append((method.upper(), path, filled, required))
    return found


@pytest.mark.parametrize("name", list(BODIES))
async def test_a_body_that_is_not_json_is_a_problem_of_our_own_type_on_every_json_route(
    client: httpx.AsyncClient, auth_headers: Headers, name: str
) -> None:
    content, content_type = BODIES[name]
    routes = json_routes()
    assert len(routes) >= 6  # generations, prompts, packs, images: the table is not empty
    assert any(method == "PATCH" for method, _, _, _ in routes)
    spec = (await client.get("/openapi.json")).json()
    headers = auth_headers(USER)
    if content_type:
        headers["Content-Type"] = content_type
    for method, template, path, required in routes:
        if name in {"empty", "json-null"} and not required:
            continue  # an empty body, or null, is no body, which this operation accepts
        response = await client.request(method, path, content=content, headers=headers)
        # Accept (and a PATCH's Accept-Patch) as its 415 declares them, RateLimit-* absent
        assert_documented_headers(spec, method, template, response)

        refused = name in NOT_LABELLED_JSON or (name in NOT_A_MERGE_PATCH and method == "PATCH")
        expected = (415,) if refused else (400, 422)
        assert response.status_code in expected, (name, method, path, response.text)
        body = assert_problem(response, response.status_code)
        assert body["type"].startswith(PROBLEM_BASE), (name, method, path, body)
        assert body["type"] != "about:blank"
        if refused:
            # a PATCH takes a JSON Merge Patch as well, and says so
            takes = ["application/json"] + (["application/merge-patch+json"] * (method == "PATCH"))
            assert body["accepted"] == takes
            assert response.headers["Accept"] == ", ".join(takes)
            assert response.headers.get("Accept-Patch") == (
                ", ".join(takes) if method == "PATCH" else None
            )
    if name.startswith("deep"):
        assert body["detail"] == "The JSON body is nested too deeply to parse."
    if name == "invalid-utf8":
        assert "UTF-8" in body["detail"]


@pytest.mark.parametrize("name", list(BODIES))
async def test_a_body_is_not_looked_at_before_the_caller_is(
    client: httpx.AsyncClient, name: str
) -> None:
    """Without a token, whatever the body: the 401, never feedback on the body (FastAPI
    parses a JSON body before it solves the dependencies that check the token)."""
    content, content_type = BODIES[name]
    spec = (await client.get("/openapi.json")).json()
    headers = {"Content-Type": content_type} if content_type else {}
    checked = 0
    for method, template, path, _ in json_routes():
        if not spec["paths"][template][method.lower()].get("security"):
            continue  # a route anyone may call (none takes JSON today)
        response = await client.request(method, path, content=content, headers=headers)
        assert response.status_code == 401, (name, method, path, response.text)
        assert_problem(response, 401)
        checked += 1
    assert checked >= 6


async def test_a_json_patch_is_a_415_and_a_merge_style_object_is_what_a_patch_takes(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    """A PATCH takes the fields to change as a JSON object (application/json, or
    application/merge-patch+json, RFC 7396, which means the same); a JSON Patch (RFC 6902)
    is another format, refused as any media type the operation does not take, even as an
    object it would otherwise have read, and after the token's 401 as those are."""
    headers = auth_headers(USER)
    created = await client.post("/v1/prompts", json={"prompt_text": "a fox"}, headers=headers)
    assert created.status_code == 201, created.text
    path = created.headers["Location"]
    patches = {
        "application/json-patch+json": [b'[{"op": "replace", "path": "/title", "value": "x"}]'],
        "application/json-patch+json; charset=utf-8": [b'{"title": "x"}'],
        "Application/JSON-Patch+JSON": [b"[]"],
    }
    for content_type, bodies in patches.items():
        for content in bodies:
            sent = {**headers, "Content-Type": content_type}
            response = await client.patch(path, content=content, headers=sent)

            body = assert_problem(response, 415)
            assert body == {
                "type": PROBLEM_BASE + "unsupported-media-type",
                "title": "Unsupported media type",
                "status": 415,
                "detail": "The body must be sent as Content-Type: application/json or "
                "application/merge-patch+json; this "
                f"request has Content-Type: {content_type}.",
                "accepted": ["application/json", "application/merge-patch+json"],
            }
            takes = "application/json, application/merge-patch+json"
            assert response.headers["Accept"] == takes
            assert response.headers["Accept-Patch"] == takes
    unchanged = await client.get(path, headers=headers)
    assert unchanged.json() == created.json()

    anonymous = {"Content-Type": "application/json-patch+json"}
    assert_problem(await client.patch(path, content=b"[]", headers=anonymous), 401)
    for n, content_type in enumerate(("application/json", "application/merge-patch+json")):
        sent = {**headers, "Content-Type": content_type}
        changed = await client.patch(path, content=f'{{"title": "t{n}"}}', headers=sent)
        assert changed.status_code == 200, changed.text
        assert changed.json()["title"] == f"t{n}"


async def test_a_patch_answers_the_415_its_document_shows(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    """What the OpenAPI document (and the TypeScript client built from it) shows of each
    PATCH's 415 is what it answers: its example's body, and an Accept and Accept-Patch
    naming both the types it takes."""
    spec = (await client.get("/openapi.json")).json()
    headers = {**auth_headers(USER), "Content-Type": "text/plain"}
    patches = [(t, p) for m, t, p, _ in json_routes() if m == "PATCH"]
    assert len(patches) >= 4  # images, prompts, packs, webhook endpoints
    for template, path in patches:
        response = await client.patch(path, content=b"{}", headers=headers)
        body = assert_problem(response, 415)
        documented = spec["paths"][template]["patch"]["responses"]["415"]
        [example] = documented["content"]["application/problem+json"]["examples"].values()
        assert body == example["value"], template
        for name in ("Accept", "Accept-Patch"):
            said = documented["headers"][name]["description"]
            assert f"`{response.headers[name]}`" in said, (template, name, said)


async def test_a_deep_json_body_leaves_the_service_working(
    client: httpx.AsyncClient, auth_headers: Headers, app: FastAPI
) -> None:
    headers = {**auth_headers(USER), "Content-Type": "application/json"}
    for _ in range(20):
        response = await client.post("/v1/prompts", content=b"[" * 50_000, headers=headers)
        assert_problem(response, 400)
    ok = await client.post("/v1/prompts", json={"prompt_text": "still fine"}, headers=headers)
    assert ok.status_code == 201, ok.text
