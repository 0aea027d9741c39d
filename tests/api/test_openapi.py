"""/openapi.json: good enough to generate a typed client from, errors included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Query

from app.config import Settings
from app.errors import PROBLEM_BASE, PROBLEM_TYPES
from app.main import _add_routes, create_app
from app.openapi import responses
from app.openapi_examples import operations, webhook_operations
from tests.fakes.running import running

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"


def problem_content(status: str) -> dict[str, Any]:
    """What an error response documents: the problem schema of its status (its examples
    aside: tests/api/test_openapi_examples.py checks those)."""
    return {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF + status}}}


def without_examples(content: dict[str, Any]) -> dict[str, Any]:
    return {
        media_type: {key: value for key, value in media.items() if key != "examples"}
        for media_type, media in content.items()
    }


# The only operations that may document nothing but the app-wide errors.
OPERATIONAL = {"/healthz", "/metrics"}


def error_responses(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        str(status): response
        for status, response in operation["responses"].items()
        if str(status)[:1] in ("4", "5")
    }


async def fetch_spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    spec = response.json()
    assert isinstance(spec, dict)
    return spec


async def test_openapi_is_3_1_with_operations(client: httpx.AsyncClient) -> None:
    spec = await fetch_spec(client)
    assert spec["openapi"].startswith("3.1")
    found = {(path, method) for path, method, _ in operations(spec)}
    assert {("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"), ("/v1/me", "get")} <= (
        found
    )


async def test_every_operation_has_a_unique_operation_id(client: httpx.AsyncClient) -> None:
    spec = await fetch_spec(client)
    ids = [op.get("operationId") for _, _, op in operations(spec)]
    ids += [op.get("operationId") for _, op in webhook_operations(spec)]  # one namespace in TS
    assert {"job_completed", "job_failed"} <= set(ids)
    assert all(isinstance(i, str) and i for i in ids), ids
    assert len(ids) == len(set(ids)), sorted(map(str, ids))


async def test_every_operation_documents_its_errors_as_problem_json(
    client: httpx.AsyncClient,
) -> None:
    spec = await fetch_spec(client)
    for path, method, operation in operations(spec):
        errors = error_responses(operation)
        where = f"{method.upper()} {path}"
        if path not in OPERATIONAL:
            assert errors, f"{where} documents no error response"
        for status, response in errors.items():
            assert response.get("description"), f"{where} {status} has no description"
            # Exactly what the handlers send: problem+json, and nothing else.
            assert without_examples(response["content"]) == problem_content(status), (
                where,
                status,
                response,
            )


async def test_operations_that_can_fail_validation_document_422_as_problem_json(
    client: httpx.AsyncClient,
) -> None:
    spec = await fetch_spec(client)
    for path, method, operation in operations(spec):
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in operation["responses"], f"{method.upper()} {path}"
    # FastAPI's own validation error schema (application/json) is never what is sent.
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "HTTPValidationError" not in str(spec)


async def test_operations_that_authenticate_document_401_and_bearer_security(
    client: httpx.AsyncClient,
) -> None:
    spec = await fetch_spec(client)
    schemes = spec["components"]["securitySchemes"]
    bearer = [
        name
        for name, scheme in schemes.items()
        if scheme["type"] == "http" and scheme["scheme"].lower() == "bearer"
    ]
    assert bearer, schemes
    secured = [(path, op) for path, _, op in operations(spec) if op.get("security")]
    assert any(path == "/v1/me" for path, _ in secured)
    for path, operation in secured:
        assert all(set(requirement) <= set(bearer) for requirement in operation["security"])
        assert "401" in operation["responses"], path


async def test_problem_schema_describes_rfc_9457_members(client: httpx.AsyncClient) -> None:
    spec = await fetch_spec(client)
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["properties"])
    assert {"title", "status"} <= set(problem["required"])
    assert problem["properties"]["status"]["type"] == "integer"
    # Extra members (balance, cost, errors) are allowed.
    assert problem.get("additionalProperties") is True


async def test_a_new_route_without_declared_errors_still_documents_problem_json(
    settings: Settings,
) -> None:
    app: FastAPI = create_app(settings)

    @app.get("/_test/items/{item_id}", operation_id="test_get_item")
    async def get_item(item_id: int, tag: Annotated[str, Query(max_length=10)] = "") -> None:
        """A route that declares no error responses of its own."""

    async with running(app) as client:
        spec = await fetch_spec(client)
    operation = spec["paths"]["/_test/items/{item_id}"]["get"]
    errors = error_responses(operation)
    # FastAPI's automatic 422 and the app-wide 413/500, all as problem+json.
    assert {"413", "422", "500"} <= set(errors)
    for status, response in errors.items():
        assert without_examples(response["content"]) == problem_content(status)
    assert "HTTPValidationError" not in str(spec)


async def test_each_error_status_lists_the_problem_types_it_answers(
    client: httpx.AsyncClient,
) -> None:
    spec = await fetch_spec(client)
    schemas = spec["components"]["schemas"]
    for status, types in PROBLEM_TYPES.items():
        schema = schemas[f"Problem{status}"]
        assert schema["properties"]["type"]["enum"] == list(types)
        assert schema["properties"]["status"]["const"] == status
        assert {"type", "title", "status"} <= set(schema["required"])
    assert "about:blank" in schemas["Problem500"]["properties"]["type"]["enum"]
    # about:blank is an unexpected error's alone: every other status has a type of its own.
    for status in set(PROBLEM_TYPES) - {500}:
        assert all(t.startswith(PROBLEM_BASE) for t in PROBLEM_TYPES[status]), status


async def test_every_operation_with_a_body_documents_the_400_of_an_unparsable_one(
    client: httpx.AsyncClient,
) -> None:
    spec = await fetch_spec(client)
    with_body = [(p, m, op) for p, m, op in operations(spec) if "requestBody" in op]
    assert len(with_body) >= 10
    for path, method, operation in with_body:
        assert "400" in operation["responses"], f"{method.upper()} {path}"


async def test_every_operation_with_a_body_documents_its_415(
    client: httpx.AsyncClient,
) -> None:
    """What tests/api/test_hardening.py and tests/generation/test_uploads.py get answered.
    The webhook receivers document no body (they read their sender's bytes, whatever their
    label: tests/billing and tests/identity), so they document no 415 either."""
    spec = await fetch_spec(client)
    with_body = [(p, m, op) for p, m, op in operations(spec) if "requestBody" in op]
    assert not [path for path, _, _ in with_body if path.startswith("/webhooks/")]
    for path, method, operation in with_body:
        documented = operation["responses"].get("415")
        assert documented is not None, f"{method.upper()} {path}"
        [example] = documented["content"]["application/problem+json"]["examples"].values()
        media = next(iter(operation["requestBody"]["content"]))
        accepted = example["value"]["accepted"]
        upload = media == "multipart/form-data"
        takes = [media, "application/merge-patch+json"] if method == "patch" else [media]
        assert accepted == (["image/png", "image/jpeg", "image/webp"] if upload else takes)


def _enum_or_string(schema: Any) -> Iterator[Any]:
    """Every `anyOf` that offers an enum beside a bare string (an enum that narrows nothing)."""
    if isinstance(schema, dict):
        options = schema.get("anyOf", [])
        kinds = [o for o in options if isinstance(o, dict)]
        if any("enum" in o or "const" in o for o in kinds) and {"type": "string"} in kinds:
            yield schema
        for value in schema.values():
            yield from _enum_or_string(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _enum_or_string(value)


async def test_enums_are_closed(client: httpx.AsyncClient) -> None:
    spec = await fetch_spec(client)
    assert list(_enum_or_string(spec)) == []
    schemas = spec["components"]["schemas"]
    assert schemas["Job"]["properties"]["status"]["enum"] == [
        "pending",
        "running",
        "completed",
        "failed",
    ]
    assert "enum" in schemas["ImageItem"]["properties"]["visibility"]
    assert "enum" in schemas["LedgerEntry"]["properties"]["reason"]


async def test_event_streams_describe_each_event(client: httpx.AsyncClient) -> None:
    spec = await fetch_spec(client)
    schemas = spec["components"]["schemas"]
    feed = spec["paths"]["/v1/feed/events"]["get"]["responses"]["200"]["content"]
    item = feed["text/event-stream"]["itemSchema"]
    assert set(item["discriminator"]["mapping"]) == {"ready", "image", "likes", "removed", "resync"}
    for ref in item["discriminator"]["mapping"].values():
        event = schemas[ref.rsplit("/", 1)[1]]
        data = event["properties"]["data"]
        assert data["type"] == "string"
        assert data["contentMediaType"] == "application/json"
        assert data["contentSchema"]["$ref"].rsplit("/", 1)[1] in schemas
    jobs = spec["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    job_event = jobs["text/event-stream"]["itemSchema"]["$ref"]
    assert job_event == "#/components/schemas/JobEvent"
    assert schemas["JobEvent"]["properties"]["data"]["contentSchema"] == {
        "$ref": "#/components/schemas/Job"
    }


def test_a_router_that_does_not_list_413_and_500_is_refused(settings: Settings) -> None:
    """app.main adds routers' routes to the app as they are, where the app's own 413/500
    responses do not reach: a router that forgets openapi.ANY_OPERATION fails at start."""
    router = APIRouter(prefix="/v1", responses=responses(401))

    @router.get("/forgetful", operation_id="forgetful")
    async def forgetful() -> None:
        """Lists only its 401."""

    with pytest.raises(RuntimeError, match="ANY_OPERATION"):
        _add_routes(create_app(settings), router)
