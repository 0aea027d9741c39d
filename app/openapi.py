"""The OpenAPI document: every error response rewritten to say problem+json, as the handlers
answer, with the problem `type`s of its status and the headers they send with it;
server-sent events described; and `header_docs` / `sse_events` for what a route documents
beyond its response model."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, get_args

from fastapi import FastAPI
from pydantic import BaseModel
from standardwebhooks import Webhook

from app.core.messages import json_body_types
from app.errors import JSON, PROBLEM_JSON, PROBLEM_TYPES, Problem
from app.openapi_examples import (
    EVENT_STREAM,
    SCHEMAS,
    add_examples,
    app_models,
    component_names,
    fits,
    resolve,
    webhook_operations,
)
from app.openapi_samples import add_samples
from app.schemas.outgoing import DELIVERY_EXAMPLE, SECRET_EXAMPLE
from app.services.rate_limits import HEADER_NAMES as RATE_LIMIT_HEADER_NAMES

# The event models `sse_events` named, added to the document's components by name.
_EVENT_MODELS: dict[str, type[BaseModel]] = {}
_FORM_SCHEMAS: dict[str, dict[str, Any]] = {}  # multipart bodies a route reads itself
# Marks a stream's media type for `document_problems`, which puts `sse_events`' item schema in
# place of FastAPI's generic one (FastAPI merges a route's `responses` into its own).
_EVENTS_KEY = "x-atelier-item-schema"
UNPARSABLE_BODY = (
    "The body could not be read: bytes that are not text, JSON nested too deeply, or broken "
    "multipart (JSON that does not parse, or is not an object, is a 422 `validation` problem)"
)


# What generations.submit and pack_sets.submit accept as an Idempotency-Key (another is a
# 400): the schema only, as Header(max_length=...) would make a malformed key a 422.
IDEMPOTENCY_KEY_SCHEMA: dict[str, Any] = {"pattern": "^[\\x21-\\x7e]{1,255}$"}


def problem_schema_name(status: int) -> str:
    return f"Problem{status}"


def _problem_schemas() -> dict[str, dict[str, Any]]:
    """`Problem<status>`: the problem members with `type` closed to what that status answers."""
    base = Problem.model_json_schema(ref_template=SCHEMAS + "{model}")
    base.pop("example", None)
    schemas = {}
    for status, types in PROBLEM_TYPES.items():
        schema = copy.deepcopy(base)
        schema["title"] = problem_schema_name(status)
        schema["description"] = f"A {status} problem (RFC 9457)."
        schema["properties"]["type"] = {
            "type": "string",
            "enum": list(types),
            "title": "Type",
            "description": "A URI naming the kind of problem (the README lists them).",
        }
        schema["properties"]["status"] = {"type": "integer", "const": status, "title": "Status"}
        schema["required"] = ["type", "title", "status"]
        schemas[problem_schema_name(status)] = schema
    return schemas


def _problem_content(status: int) -> dict[str, Any]:
    name = problem_schema_name(status) if status in PROBLEM_TYPES else "Problem"
    return {PROBLEM_JSON: {"schema": {"$ref": SCHEMAS + name}}}


def _add_event_models(schemas: dict[str, Any], document: str) -> None:
    for name, model in _EVENT_MODELS.items():
        if f'"{SCHEMAS}{name}"' not in document:
            continue
        schema = model.model_json_schema(ref_template=SCHEMAS + "{model}", mode="serialization")
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        # On the wire `data` is JSON text: a string whose content the model describes.
        schema["properties"]["data"] = {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": schema["properties"]["data"],
        }
        schema["examples"] = [
            {**example, "data": json.dumps(example["data"])}
            for example in schema.get("examples", [])
        ]
        schemas.setdefault(model.__name__, schema)


def restore_examples(
    schemas: dict[str, Any], models: Iterable[type[BaseModel]] | None = None
) -> None:
    """Put back the models' examples as written: FastAPI builds the document with
    `exclude_none`, which drops every null from them, so an example of a required nullable
    field (`"error": null`) no longer matched its own schema.

    A component is matched to the model (of `models`, default every app model) named as
    pydantic names its component, and whose properties it has; a name that fits no model or
    several is an error rather than another model's examples."""
    claims: dict[str, list[type[BaseModel]]] = {}
    for model in app_models() if models is None else models:
        for name in component_names(model) & schemas.keys():
            claims.setdefault(name, []).append(model)
    for name, claimants in claims.items():
        fitting = [model for model in claimants if fits(model, schemas[name])]
        if len(fitting) != 1:
            named = ", ".join(f"{m.__module__}.{m.__qualname__}" for m in claimants)
            raise RuntimeError(
                f"The component {name} fits {len(fitting)} of the models named like it "
                f"({named}): rename one so its examples cannot be put on another's schema."
            )
        extra = fitting[0].model_config.get("json_schema_extra")
        if isinstance(extra, dict) and "examples" in extra:
            schemas[name]["examples"] = copy.deepcopy(extra["examples"])


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make every 4xx/5xx response of an OpenAPI document say problem+json, as the handlers do.

    FastAPI lists a `model` response under the route's media type (application/json) too, and
    adds its own 422 (`HTTPValidationError`, application/json) to operations with parameters
    that do not document one: neither is what the client receives. Each error refers to
    `Problem<status>`, whose `type` enumerates the problem types of that status. Every
    operation that takes a body documents the 400 of a body that cannot be parsed, and the
    415 of one in another media type. Each response declares the headers the handlers send
    with it (`_declare_headers`).
    """
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            if not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation and "400" not in responses and 400 not in responses:
                responses["400"] = {"description": UNPARSABLE_BODY}
            if "requestBody" in operation:  # the webhook receivers read theirs themselves
                responses.setdefault("415", {"description": UNSUPPORTED_MEDIA_TYPE})
            for status, response in responses.items():
                if str(status)[:1] in ("4", "5"):
                    response["content"] = _problem_content(int(status))
                _declare_headers(method, operation, str(status), response)
                stream = response.get("content", {}).get(EVENT_STREAM, {})
                if _EVENTS_KEY in stream:
                    stream["itemSchema"] = stream.pop(_EVENTS_KEY)
    schemas.setdefault("Problem", Problem.model_json_schema(ref_template=SCHEMAS + "{model}"))
    for name, problem in _problem_schemas().items():
        schemas.setdefault(name, problem)
    restore_examples(schemas)
    document = json.dumps(schema)
    _add_event_models(schemas, document)
    for name, form in _FORM_SCHEMAS.items():
        if f'"{SCHEMAS}{name}"' in document:
            schemas.setdefault(name, form)
    # FastAPI's validation schemas are left unused now (the first refers to the second).
    for name in ("HTTPValidationError", "ValidationError"):
        entry = schemas.pop(name, None)
        if entry is not None and f'"{SCHEMAS}{name}"' in json.dumps(schema):
            schemas[name] = entry
    return schema


# Whenever a problem of that status is answered, app.errors sends these with it.
WWW_AUTHENTICATE = (
    "The bearer challenge (RFC 6750 §3): `Bearer` when the request carried no token, "
    '`Bearer error="invalid_token"` when its token or key was refused'
)
RETRY_AFTER = "Seconds to wait before trying again"
# `RateLimit-*` of anything but a 429: the fields of a request that was counted.
NOT_COUNTED = (
    " Absent when the request was not counted: refused before the count (its token, or a "
    "body or parameters that fail validation), or no limit is set (`RATE_LIMIT_*` empty) or "
    "its storage is down (the limit fails open)."
)


def _problem_headers(method: str, operation: dict[str, Any], status: str) -> dict[str, Any]:
    """The headers app.errors answers every problem of `status` with, on this operation."""
    if status == "401":  # errors.Unauthorized
        return header_docs(required=True, WWW_Authenticate=WWW_AUTHENTICATE)
    if status == "429":  # rate_limits.RateLimited: its Retry-After and the spent quota
        return header_docs(required=True, Retry_After=RETRY_AFTER)
    body = next(iter(operation.get("requestBody", {}).get("content", {})), None)
    if status != "415" or body is None:
        return {}
    if body != JSON:  # an upload: Accept only when the Content-Type was wrong, not the file
        return header_docs(
            Accept=f"`{body}`, when the request was not sent as that; absent when the "
            "file's image format was refused (`accepted` lists those this takes)"
        )
    types = json_body_types(method)
    takes = f"`{', '.join(types)}`"
    them = "the media types this takes" if len(types) > 1 else "the media type this takes"
    accept = header_docs(required=True, Accept=f"{takes}: {them}")
    if method == "patch":  # errors._validation_error, RFC 5789 §2.2
        return {**accept, **header_docs(required=True, Accept_Patch=takes)}
    return accept


def _declare_headers(
    method: str, operation: dict[str, Any], status: str, response: dict[str, Any]
) -> None:
    """Declare on `response` the headers its status always carries (`_problem_headers`,
    required; a route's own description of one stays), and say of its `RateLimit-*` fields
    when they are absent: always sent with a 429, with anything else only once the request
    was counted, which a request refused before the count (a 422 of its body) never was."""
    headers: dict[str, Any] = dict(response.get("headers", {}))  # routes share their dicts
    for name, declared in _problem_headers(method, operation, status).items():
        headers[name] = {**declared, **headers.get(name, {})}
        if declared.get("required"):
            headers[name]["required"] = True
    for name in RATE_LIMIT_HEADER_NAMES:
        declared = headers.get(name)
        if declared is None:
            continue
        if status == "429":
            headers[name] = {**declared, "required": True}
        elif NOT_COUNTED not in declared["description"]:
            headers[name] = {**declared, "description": declared["description"] + "." + NOT_COUNTED}
    if headers:
        response["headers"] = headers


def add_delivery_examples(spec: dict[str, Any]) -> dict[str, Any]:
    """Each webhook's body example is its own event's, and its header examples are those of
    a real first attempt of that body: signed with the endpoint example's secret, so a
    receiver can check its verifier against them."""
    first_attempt = datetime.fromisoformat(DELIVERY_EXAMPLE["attempts"][0]["attempted_at"])
    first_attempt = first_attempt.replace(microsecond=0).astimezone(UTC)
    for event, operation in webhook_operations(spec):
        media = operation["requestBody"]["content"]["application/json"]
        examples = resolve(spec, media["schema"])["examples"]
        body = next(example for example in examples if example["type"] == event)
        media["example"] = body
        sent = json.dumps(body, separators=(",", ":"))  # as outgoing sends it
        # a delivery id of the event's own: ids are never shared between events
        delivery_id = str(uuid.uuid5(uuid.UUID(DELIVERY_EXAMPLE["id"]), event))
        headers = {
            "webhook-id": delivery_id,
            "webhook-timestamp": str(int(first_attempt.timestamp())),
            "webhook-signature": Webhook(SECRET_EXAMPLE).sign(delivery_id, first_attempt, sent),
        }
        for parameter in operation["parameters"]:
            parameter["example"] = headers[parameter["name"]]
    return spec


def install(app: FastAPI) -> None:
    """Serve an OpenAPI document whose error responses all say application/problem+json,
    with examples everywhere (`app.openapi_examples`, and each webhook's signed delivery)
    and a curl sample per operation (`app.openapi_samples`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = add_examples(document_problems(generate()))
            app.openapi_schema = add_samples(add_delivery_examples(document))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def header_docs(*, required: bool = False, **headers: str) -> dict[str, dict[str, Any]]:
    """OpenAPI `headers` of a response: {name: description}, each a string; `required`
    when every answer of that response carries them (schemathesis checks it is so)."""
    return {
        name.replace("_", "-"): {
            "description": text,
            **({"required": True} if required else {}),
            "schema": {"type": "string"},
        }
        for name, text in headers.items()
    }


def with_headers(
    entries: dict[int | str, dict[str, Any]], headers: dict[str, dict[str, Any]]
) -> dict[int | str, dict[str, Any]]:
    """`entries` (responses(...)) whose answers may carry `headers` too, beside any they
    declare: problems that come after a request was counted carry its RateLimit-* fields."""
    return {
        status: {**entry, "headers": {**entry.get("headers", {}), **headers}}
        for status, entry in entries.items()
    }


def multipart_body(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its multipart body itself, once its
    dependencies have run (FastAPI reads a declared `File` before any of them): the body is
    documented as FastAPI would document it, its schema the component `name`."""
    _FORM_SCHEMAS[name] = schema
    content = {"multipart/form-data": {"schema": {"$ref": SCHEMAS + name}}}
    return {"requestBody": {"content": content, "required": True}}


def sse_events(description: str, *models: type[BaseModel]) -> dict[str, Any]:
    """The 200 response of a server-sent event stream whose events are `models` (each with
    `event`, maybe `id`, and `data` given parsed), as OpenAPI 3.2's `itemSchema` says."""
    mapping: dict[str, str] = {}
    for model in models:
        _EVENT_MODELS[model.__name__] = model
        (name,) = get_args(model.model_fields["event"].annotation)
        mapping[name] = SCHEMAS + model.__name__
    refs = [{"$ref": ref} for ref in mapping.values()]
    item: dict[str, Any] = refs[0]
    if len(refs) > 1:
        item = {"oneOf": refs, "discriminator": {"propertyName": "event", "mapping": mapping}}
    return {
        "description": description,
        "content": {
            EVENT_STREAM: {
                _EVENTS_KEY: item,
            }
        },
    }


# What any operation can answer: the body limit's 413 (app.middleware) and the server's own
# 500. Every router lists them first, as the app's own `responses=` did: app.main adds the
# routers' routes to the app directly, where an app's `responses=` does not reach.
ANY_OPERATION = (413, 500)


UNSUPPORTED_MEDIA_TYPE = (
    "The body is not in a media type this operation takes (its Content-Type, or an "
    "upload's image format); `accepted` lists those it takes"
)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the problem+json errors an operation can answer."""
    descriptions = {
        400: "Bad request",
        401: "Missing or invalid bearer token",
        402: "Not enough credits (`balance` and `cost` say by how much)",
        403: "Forbidden",
        404: "Not found, or not yours",
        409: "Conflict",
        413: "Request body too large",
        415: UNSUPPORTED_MEDIA_TYPE,
        422: "Invalid input",
        429: "Too many requests",
        500: "Unexpected server error (logged; no details are exposed)",
        503: "A dependency is unavailable; retry later",
    }
    return {
        status: {
            "description": descriptions.get(status, "Error"),
            "model": Problem,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
