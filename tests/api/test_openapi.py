"""/openapi.json: good enough to generate a typed client from, errors included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Query

from app.config import Settings
from app.main import create_app
from tests.fakes.running import running

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
# The only operations that may document nothing but the app-wide errors.
OPERATIONAL = {"/healthz", "/metrics"}


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


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
            assert response["content"] == {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}, (
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
    for response in errors.values():
        assert response["content"] == {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}
    assert "HTTPValidationError" not in str(spec)
