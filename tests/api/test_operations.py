"""Operations: health and readiness, Prometheus metrics, request ids in JSON logs, CORS."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.db import migrate
from app.main import create_app
from tests.fakes.running import json_lines, json_logging, running
from tests.support.problems import assert_problem

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
WEB_APP = "https://app.atelier.test"


# Health and readiness.


async def test_healthz_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_on_a_migrated_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready"}


@pytest.fixture
def own_db_url(
    new_database: Callable[..., str], drop_database: Callable[[str], None], template_db: str
) -> Iterator[str]:
    """A migrated database of this test's own, free to drop."""
    url = new_database(template_db)
    yield url
    drop_database(url)


async def test_readyz_is_503_until_every_migration_on_disk_is_applied(
    empty_url: str, make_settings: Callable[..., Settings]
) -> None:
    url = empty_url
    on_disk = migrate.discover()
    assert len(on_disk) >= 2
    async with running(create_app(make_settings(database_url=url))) as client:
        body = assert_problem(await client.get("/readyz"), 503)
        assert "atelier migrate" in body["detail"]
        assert all(m.name in body["detail"] for m in on_disk)

        conn = await asyncpg.connect(url)
        try:
            await migrate.migrate(conn, on_disk[:-1])
            body = assert_problem(await client.get("/readyz"), 503)
            assert on_disk[-1].name in body["detail"]
            assert on_disk[0].name not in body["detail"]

            await migrate.migrate(conn)
        finally:
            await conn.close()
        response = await client.get("/readyz")
        assert response.status_code == 200, response.text


async def test_readyz_is_503_when_an_applied_migration_was_edited(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    assert (await client.get("/readyz")).status_code == 200
    await db.execute(
        "UPDATE atelier_migrations SET checksum = 'edited'"
        " WHERE version = (SELECT max(version) FROM atelier_migrations)"
    )
    body = assert_problem(await client.get("/readyz"), 503)
    assert "edited" in body["detail"]


async def test_readyz_is_503_not_500_when_the_database_goes_away(
    own_db_url: str, pg_server_url: str, make_settings: Callable[..., Settings]
) -> None:
    url = own_db_url
    name = urlsplit(url).path.lstrip("/")
    async with running(create_app(make_settings(database_url=url))) as client:
        assert (await client.get("/readyz")).status_code == 200
        admin = await asyncpg.connect(pg_server_url)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        # The pooled connection was killed, and a new one finds no database: both are 503.
        for _ in range(3):
            assert_problem(await client.get("/readyz"), 503)
        assert (await client.get("/healthz")).status_code == 200


# Metrics.


def samples(text: str, name: str) -> dict[tuple[str, str, str], float]:
    """(route, method, status) → value of the metric `name` in a Prometheus exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                labels = sample.labels
                found[(labels["route"], labels["method"], labels["status"])] = sample.value
    return found


async def test_metrics_expose_request_latency_by_route_template(
    client: httpx.AsyncClient, auth_headers: Callable[..., dict[str, str]]
) -> None:
    headers = auth_headers("user_metrics")
    for _ in range(2):
        assert (await client.get("/v1/me", headers=headers)).status_code == 200
    assert (await client.get("/v1/credits/ledger?limit=abc", headers=headers)).status_code == 422
    assert (await client.get("/v1/no/such/thing/123")).status_code == 404

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    counts = samples(response.text, "atelier_http_request_duration_seconds_count")
    assert counts[("/v1/me", "GET", "200")] == 2
    assert counts[("/v1/credits/ledger", "GET", "422")] == 1
    # Unmatched paths share one label: a scanner cannot blow up the series count.
    assert counts[("unmatched", "GET", "404")] == 1
    assert not any("123" in route for route, _, _ in counts)
    assert "# TYPE atelier_http_request_duration_seconds histogram" in response.text
    assert "atelier_credits_spent_total" in response.text


# Request ids.


async def test_request_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    first = (await client.get("/healthz")).headers["x-request-id"]
    second = (await client.get("/nope")).headers["x-request-id"]
    assert GENERATED_ID.match(first) and GENERATED_ID.match(second)
    assert first != second


async def test_api_answers_are_not_stored_by_shared_caches(
    client: httpx.AsyncClient, auth_headers: Callable[..., dict[str, str]]
) -> None:
    """Answers under /v1/ belong to one caller: never stored, and varying by token."""
    headers = auth_headers("user_cache")
    answers = [
        await client.get("/v1/me", headers=headers),
        await client.get("/v1/feed", headers=headers),
        await client.get("/v1/images/not-a-uuid", headers=headers),  # errors too
        await client.get("/v1/me"),  # and the 401
    ]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.request.url
        assert "Authorization" in answer.headers.get_list("vary"), answer.request.url
    health = await client.get("/healthz")
    assert "authorization" not in health.headers.get("vary", "").lower()


async def test_sane_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    for sent in ("req-123", "0b4f7c2e-9a1d-4c55-8e0f-2f6a1b3c4d5e", "edge.lb:trace_9", "r" * 128):
        for path in ("/healthz", "/nope"):
            response = await client.get(path, headers={"X-Request-ID": sent})
            assert response.headers["x-request-id"] == sent


async def test_invalid_request_id_is_replaced_by_a_generated_one(
    client: httpx.AsyncClient,
) -> None:
    for sent in ("r" * 129, "x" * 300, "has spaces", "a;b", "<script>", "line\tbreak", ""):
        response = await client.get("/healthz", headers={"X-Request-ID": sent})
        assert response.status_code == 200
        assert GENERATED_ID.match(response.headers["x-request-id"]), sent


async def test_access_log_is_one_json_line_carrying_the_request_id(
    client: httpx.AsyncClient,
    auth_headers: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    headers = auth_headers("user_logs")
    capsys.readouterr()
    with json_logging():
        sent = await client.get("/v1/me", headers={**headers, "X-Request-ID": "log-test-1"})
        generated = await client.get("/nope")
    entries = json_lines(capsys.readouterr().err)  # every line is JSON
    assert sent.status_code == 200 and generated.status_code == 404
    new_id = generated.headers["x-request-id"]

    access = [e for e in entries if e["logger"] == "atelier.access"]
    assert [(e["request_id"], e["status"], e["msg"]) for e in access] == [
        ("log-test-1", 200, "GET /v1/me 200"),
        (new_id, 404, "GET /nope 404"),
    ]
    for entry in access:
        assert entry["level"] == "info"
        assert isinstance(entry["duration_ms"], float | int)
        assert entry["ts"]
    # Whatever else the app logged while serving them carries a request id too (the test
    # client's "httpx" lines and the in-process worker's are logged outside any request).
    background = ("httpx", "atelier.worker", "atelier.realtime")
    served = [e for e in entries if not e["logger"].startswith(background)]
    assert {e.get("request_id") for e in served} <= {"log-test-1", new_id}, served


# CORS.


async def test_cors_preflight_is_allowed_for_configured_origins_only(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(cors_origins=[WEB_APP]))
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, x-request-id",
    }
    async with running(app) as client:
        allowed = await client.options("/v1/me", headers={**preflight, "Origin": WEB_APP})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == WEB_APP
        allow_headers = allowed.headers["access-control-allow-headers"].lower()
        assert "authorization" in allow_headers and "x-request-id" in allow_headers

        refused = await client.options(
            "/v1/me", headers={**preflight, "Origin": "https://evil.test"}
        )
        assert "access-control-allow-origin" not in refused.headers
        assert "origin" in assert_problem(refused, 400)["detail"]

        # Simple requests: the web app may read the response and its request id.
        response = await client.get("/healthz", headers={"Origin": WEB_APP})
        assert response.headers["access-control-allow-origin"] == WEB_APP
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
        response = await client.get("/healthz", headers={"Origin": "https://evil.test"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers

        # Without an Origin (the apps, integrators) no CORS headers, but a cache is told the
        # answer varies by Origin, so it cannot give a browser an answer without them.
        for path in ("/healthz", "/v1/me"):
            response = await client.get(path)
            assert not any(name.startswith("access-control-") for name in response.headers)
            assert "Origin" in response.headers.get_list("vary"), path
            response = await client.get(path, headers={"Origin": WEB_APP})
            assert "Origin" in response.headers.get_list("vary"), path


async def test_no_cors_headers_without_cors_origins(client: httpx.AsyncClient) -> None:
    preflight = {"Origin": WEB_APP, "Access-Control-Request-Method": "GET"}
    response = await client.options("/v1/me", headers=preflight)
    assert not any(name.startswith("access-control-") for name in response.headers)
    assert_problem(response, 405)
    response = await client.get("/healthz", headers={"Origin": WEB_APP})
    assert not any(name.startswith("access-control-") for name in response.headers)


async def test_cors_origins_env_var_is_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch, db_url: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.test, https://b.test")
    settings = Settings(_env_file=None)
    assert settings.cors_origins == ["https://a.test", "https://b.test"]

    # And the app built from the environment answers both.
    settings = Settings(
        _env_file=None, env="test", database_url=db_url, data_dir=tmp_path / "data", auth="dev"
    )
    async with running(create_app(settings)) as client:
        for origin in ("https://a.test", "https://b.test"):
            response = await client.get("/healthz", headers={"Origin": origin})
            assert response.headers["access-control-allow-origin"] == origin
        response = await client.get("/healthz", headers={"Origin": "https://c.test"})
        assert "access-control-allow-origin" not in response.headers


def test_development_allows_the_local_web_origins_unless_cors_origins_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CORS_ORIGINS", raising=False)
    development = Settings(_env_file=None, env="development")
    assert {"http://localhost:3000", "http://127.0.0.1:3000", "http://localhost:8081"} <= set(
        development.allowed_origins
    )
    assert Settings(_env_file=None, env="test").allowed_origins == []
    assert Settings(_env_file=None, env="development", cors_origins=[]).allowed_origins == []
    only = Settings(_env_file=None, env="development", cors_origins=["https://a.test"])
    assert only.allowed_origins == ["https://a.test"]


async def test_a_browser_may_send_and_read_the_headers_the_api_uses(
    make_settings: Callable[..., Settings], auth_headers: Callable[..., dict[str, str]]
) -> None:
    """A reconnecting EventSource-like client sends Last-Event-ID; a generation sends
    Idempotency-Key and Prefer; the web app reads Location, Retry-After, Idempotent-Replayed,
    Preference-Applied, X-Request-ID and RateLimit-*."""
    origin = "http://localhost:3000"
    app = create_app(make_settings(env="development", cors_origins=None))
    async with running(app) as client:
        preflight = await client.options(
            "/v1/feed/events",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, last-event-id",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
        post = await client.options(
            "/v1/generations",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, "
                "idempotency-key, prefer",
            },
        )
        assert post.status_code == 200, post.text
        response = await client.get(
            "/v1/me", headers={**auth_headers("user_cors"), "Origin": origin}
        )
        exposed = {
            name.strip().lower()
            for name in response.headers["access-control-expose-headers"].split(",")
        }
        assert {
            "location",
            "retry-after",
            "idempotent-replayed",
            "preference-applied",
            "x-request-id",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "ratelimit-policy",
        } <= exposed
