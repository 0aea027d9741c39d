"""The OpenAPI document: every error response rewritten to say problem+json, as the handlers
answer, and `header_docs` for the response headers a route documents."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from app.errors import PROBLEM_JSON, Problem


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make every 4xx/5xx response of an OpenAPI document say problem+json, as the handlers do.

    FastAPI lists a `model` response under the route's media type (application/json) too, and
    adds its own 422 (`HTTPValidationError`, application/json) to operations with parameters
    that do not document one: neither is what the client receives.
    """
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                if str(status)[:1] in ("4", "5"):
                    response["content"] = {PROBLEM_JSON: {"schema": problem_ref}}
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    # FastAPI's validation schemas are left unused now (the first refers to the second).
    for name in ("HTTPValidationError", "ValidationError"):
        entry = schemas.pop(name, None)
        if entry is not None and f'"#/components/schemas/{name}"' in json.dumps(schema):
            schemas[name] = entry
    return schema


def install(app: FastAPI) -> None:
    """Serve an OpenAPI document whose error responses all say application/problem+json."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def header_docs(**headers: str) -> dict[str, dict[str, Any]]:
    """OpenAPI `headers` of a response: {name: description}, each a string."""
    return {
        name.replace("_", "-"): {"description": text, "schema": {"type": "string"}}
        for name, text in headers.items()
    }
