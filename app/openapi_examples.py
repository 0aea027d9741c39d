"""The OpenAPI document's examples, added in one place after it is built (`add_examples`).

Request and response bodies carry their examples on the pydantic models (next to the
fields); this module adds what no model holds: an example for every parameter, one problem
body per problem `type` an operation can answer on each of its error responses, and the
text of each event stream. `app.openapi_samples` builds the curl samples from all of those.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal
from uuid import UUID

import limits
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from app.config import Settings
from app.core.messages import json_body_types, missing_file_part
from app.errors import (
    ABOUT_BLANK,
    PROBLEM_JSON,
    PROBLEM_TYPES,
    UNHANDLED_PROBLEM,
    BadRequest,
    Conflict,
    Forbidden,
    HeadersTooLarge,
    InsufficientCredits,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RepeatedHeader,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    validation_problem,
)
from app.middleware import BodyLimitMiddleware, body_too_large, upload_limit
from app.schemas.api_keys import API_KEY_EXAMPLE
from app.schemas.gallery import CURSOR_EXAMPLE, PACK_ID_EXAMPLE, PROMPT_ID_EXAMPLE
from app.schemas.generations import IMAGE_ID_EXAMPLE, JOB_ID_EXAMPLE
from app.schemas.me import LEDGER_PAGE_CURSOR_EXAMPLE
from app.schemas.outgoing import ENDPOINT_EXAMPLE
from app.schemas.packs import SET_ID_EXAMPLE
from app.services import api_keys, webhook_endpoints
from app.services.rate_limits import Quota, RateLimited, Scope
from app.services.uploads import not_an_accepted_image
from app.services.webhook_urls import RefusedUrl
from app.services.webhooks import WebhookFailed

EVENT_STREAM = "text/event-stream"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
SCHEMAS = "#/components/schemas/"

# Every parameter's example, by name (headers in lower case); `(operationId, name)` first
# where one name means different things.
PARAMETER_EXAMPLES: dict[str | tuple[str, str], Any] = {
    "cursor": CURSOR_EXAMPLE,
    ("list_credit_ledger", "cursor"): LEDGER_PAGE_CURSOR_EXAMPLE,
    "limit": 20,
    "status": ["pending", "running"],
    "job_id": JOB_ID_EXAMPLE,
    "image_id": IMAGE_ID_EXAMPLE,
    "prompt_id": PROMPT_ID_EXAMPLE,
    "pack_id": PACK_ID_EXAMPLE,
    "set_id": SET_ID_EXAMPLE,
    "key_id": API_KEY_EXAMPLE["id"],
    "endpoint_id": ENDPOINT_EXAMPLE["id"],
    "user_id": "user_2abcDEF",
    "icons_limit": 50,
    "format": "zip",
    "redirect": False,
    "days": 7,
    "since": "2026-04-27T09:00:00Z",
    "key": f"generations/{JOB_ID_EXAMPLE}.png",
    "exp": 1777886223,
    "sig": "9c1f4e2b7a3d5f8e0b6c2d4a9e7f1b3c5d8a0e2f4b6c8d1a3e5f7b9c0d2e4f6a",
    "idempotency-key": "0b1e6c2a-7d4f-4e9b-8a3c-5f2d9e1b7c40",
    "prefer": "wait=10",
    "last-event-id": "ready-0f2d4b6a-8c1e-4a3b-9d5f-7e9a1c3b5d7f",
}

# A 404's detail by the path it answers (the longest prefix that fits), as the services say.
NOT_FOUND = {
    "/": "Not found.",
    "/metrics": "Metrics are served on port 9100, not here.",
    "/.well-known/jwks.json": "This service does not sign tokens (AUTH is not dev).",
    "/v1/generations": "No such upload.",
    "/v1/jobs": "No such job.",
    "/v1/images": "No such image.",
    "/v1/prompts": "No such prompt.",
    "/v1/packs": "No such pack.",
    "/v1/packs/{pack_id}/icons": "No such image of yours.",
    "/v1/packs/{pack_id}/icons/{image_id}": "That image is not in this pack.",
    "/v1/packs/{pack_id}/generations/{set_id}": "No such set of icons in this pack.",
    "/files": "No such file.",
    "/v1/admin/users": "No such user.",
    "/v1/admin/images": "No such image.",
    "/v1/api-keys": "No such API key.",
    "/v1/webhook-endpoints": "No such webhook endpoint.",
}
# The header whose signature a webhook's 400 says does not verify the body.
WEBHOOK_SIGNATURES = {"/webhooks/stripe": "Stripe-Signature", "/webhooks/clerk": "svix-signature"}


def app_models(base: type[BaseModel] = BaseModel) -> Iterator[type[BaseModel]]:
    """Every pydantic model defined under app/."""
    for model in base.__subclasses__():
        if model.__module__.startswith("app."):
            yield model
        yield from app_models(model)


def component_names(model: type[BaseModel]) -> set[str]:
    """The names pydantic may give the model's component: its own, or module and name when
    two models share a name, either maybe with FastAPI's -Input/-Output."""
    names = {model.__name__, f"{model.__module__}.{model.__qualname__}".replace(".", "__")}
    return {name + suffix for name in names for suffix in ("", "-Input", "-Output")}


def fits(model: type[BaseModel], component: dict[str, Any]) -> bool:
    """Whether the component has the model's properties (as validated or as serialized)."""
    properties = set(component.get("properties", {}))
    modes: tuple[Literal["validation", "serialization"], ...] = ("validation", "serialization")
    return any(
        set(model.model_json_schema(mode=mode).get("properties", {})) == properties
        for mode in modes
    )


def _first(table: dict[str, str], path: str) -> str:
    """The value of the longest key of `table` that `path` starts with."""
    return table[max((key for key in table if path.startswith(key)), key=len)]


def _rate_limited(operation_id: str) -> RateLimited:
    scope: Scope = "uploads" if operation_id == "create_upload" else "generations"
    item = limits.parse(Settings.model_fields[f"rate_limit_{scope}"].default)
    window = item.get_expiry()
    quota = Quota(limit=item.amount, remaining=0, reset_seconds=12, window_seconds=window)
    return RateLimited(scope, item, quota)


def _conflict(operation_id: str) -> Conflict:
    if operation_id == "create_webhook_endpoint":
        return webhook_endpoints.too_many(Settings.model_fields["webhook_endpoints_max"].default)
    if operation_id == "create_api_key":
        return api_keys.too_many(Settings.model_fields["api_keys_max"].default)
    if operation_id == "update_webhook_endpoint":
        return webhook_endpoints.still_checking(10)  # WEBHOOK_TIMEOUT_SECONDS's default
    return Conflict("This email address already belongs to another account.")


def _unprocessable(operation_id: str) -> Unprocessable | None:
    """The operation's own `unprocessable` problem as its service raises it, if it has one."""
    export_limit = Settings.model_fields["pack_export_max_icons"].default
    key = PARAMETER_EXAMPLES["idempotency-key"]
    raised = {
        "create_generation": Unprocessable("An edit needs a source image in `reference`."),
        "create_upload": Unprocessable(
            "The file is not a usable image: the image data is damaged (image file is truncated)."
        ),
        "update_prompt": Unprocessable("prompt_text cannot be cleared; send a new text instead."),
        "update_pack": Unprocessable("name cannot be cleared."),
        "create_pack_generations": Unprocessable(
            "This Idempotency-Key was used with a different request body.", idempotency_key=key
        ),
        "export_pack": Unprocessable(
            f"This pack has more than {export_limit} icons, the most one export holds.",
            limit=export_limit,
        ),
        "admin_adjust_credits": Unprocessable("A credit adjustment of 0 changes nothing."),
        "admin_get_stats": Unprocessable("Give either `days` or `since`, not both."),
        "create_checkout_session": Unprocessable(
            "No product 'credits_5000'; see GET /v1/billing/products."
        ),
        "create_billing_portal_session": Unprocessable(
            "return_url must be an absolute URL on an allowed origin."
        ),
        "create_webhook_endpoint": RefusedUrl("The host did not resolve in time."),
    }
    return raised.get(operation_id)


def _body_model(spec: dict[str, Any], schema: dict[str, Any]) -> type[BaseModel] | None:
    """The app model a request body's component was made from (an optional body's too)."""
    schema = next((s for s in schema.get("anyOf", []) if "$ref" in s), schema)
    name = schema.get("$ref", "").removeprefix(SCHEMAS)
    component = spec["components"]["schemas"].get(name, {})
    found = [
        model for model in app_models() if name in component_names(model) and fits(model, component)
    ]
    return found[0] if len(found) == 1 else None


def _parameter_error(parameter: dict[str, Any]) -> list[dict[str, Any]]:
    """What pydantic says of a value the parameter's schema refuses: a UUID that is not one,
    a number over its maximum or not a number, a text too long or that its pattern refuses;
    nothing when the schema refuses none of those."""
    schema = parameter.get("schema", {})
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    adapter: TypeAdapter[Any]
    value: object
    if schema.get("format") == "uuid":
        adapter, value = TypeAdapter(UUID), "not-a-uuid"
    elif "maximum" in schema:
        adapter, value = (
            TypeAdapter(Annotated[int, Field(le=schema["maximum"])]),
            schema["maximum"] + 1,
        )
    elif schema.get("type") == "integer":
        adapter, value = TypeAdapter(int), "soon"
    elif "maxLength" in schema:
        limit = schema["maxLength"]
        adapter, value = TypeAdapter(Annotated[str, Field(max_length=limit)]), "x" * (limit + 1)
    elif "pattern" in schema:
        adapter, value = TypeAdapter(Annotated[str, Field(pattern=schema["pattern"])]), "a b"
    else:
        return []
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        where = parameter["in"]
        return [{**e, "loc": (where, parameter["name"], *e["loc"])} for e in exc.errors()]
    return []


def _validation(spec: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
    """The operation's `validation` problem, made as errors.validation_problem makes it from
    what pydantic (or the upload route) says of a body or parameter it refuses."""
    content = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        form = resolve(spec, content["multipart/form-data"]["schema"])
        name = form["required"][0]
        missing = {"type": "missing", "loc": ("body", name), "msg": missing_file_part(name)}
        return validation_problem([missing])
    model = _body_model(spec, content.get("application/json", {}).get("schema", {}))
    if model is not None:
        # a field missing, one too many, or one of a wrong type
        wrong = [{}, {"unexpected": True}, *({name: [None]} for name in model.model_fields)]
        for body in wrong:
            try:
                model.model_validate(body)
            except ValidationError as exc:
                errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
                return validation_problem(errors)
    for parameter in operation.get("parameters", []):
        errors = _parameter_error(parameter)
        if errors:
            return validation_problem(errors)
    return None


def _bad_request(path: str, operation: dict[str, Any]) -> BadRequest:
    names = {parameter["name"].lower() for parameter in operation.get("parameters", [])}
    if path in WEBHOOK_SIGNATURES:
        return BadRequest(f"The {WEBHOOK_SIGNATURES[path]} header does not verify this body.")
    if "cursor" in names:
        return BadRequest("The cursor is not one this API handed out.")
    if "idempotency-key" in names:
        return BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters.")
    if operation.get("operationId") == "create_upload":  # Starlette's words, as answered
        return BadRequest("Too many files. Maximum number of files is 1.")
    return BadRequest("The body is not valid UTF-8 text, so it cannot be JSON.")


def _payload_too_large(operation_id: str) -> PayloadTooLarge:
    """The 413 as `BodyLimitMiddleware` raises it (errors renders its `limit` alongside), with
    the upload route's own limit as app.main sets it."""
    limit = BodyLimitMiddleware.default_limit(Settings.model_fields["max_body_bytes"].default)
    if operation_id == "create_upload":
        limit = upload_limit(Settings.model_fields["max_upload_bytes"].default)
    raised = body_too_large(limit)
    return PayloadTooLarge(str(raised.detail), limit=raised.limit)


def problem_examples(
    spec: dict[str, Any], path: str, operation: dict[str, Any], method: str = "post"
) -> dict[str, dict[str, Any]]:
    """The problem bodies an operation can answer, one per problem `type`, as the error
    classes render them: a 404 names the operation's resource, a 400 its likely mistake, a
    422 what its own body or parameters refuse, and only a webhook answers
    `webhook-failed`."""
    max_header = Settings.model_fields["max_header_bytes"].default
    raised = [
        _bad_request(path, operation),
        Unauthorized("The token has expired."),
        InsufficientCredits(balance=0, cost=1),
        Forbidden("API keys cannot be used here: sign in."),
        NotFound(_first(NOT_FOUND, path)),
        MethodNotAllowed("PUT is not allowed here."),
        _conflict(operation.get("operationId", "")),
        _payload_too_large(operation.get("operationId", "")),
        # an upload's usual 415 is its image's format; any other body's, its Content-Type
        not_an_accepted_image()
        if operation.get("operationId") == "create_upload"
        else UnsupportedMediaType.body("text/plain", json_body_types(method)),
        _rate_limited(operation.get("operationId", "")),
        HeadersTooLarge.over(max_header),
        ServiceUnavailable("Storage is unavailable; try again shortly."),
    ]
    if operation.get("security"):  # the token's (or an Idempotency-Key) repeated
        raised.append(RepeatedHeader("Authorization"))
    if path.startswith("/webhooks/"):
        raised.append(WebhookFailed("The event could not be applied; it will be retried."))
    unprocessable = _unprocessable(operation.get("operationId", ""))
    if unprocessable is not None:
        raised.append(unprocessable)
    bodies = {body["type"]: body for body in (error.to_problem() for error in raised)}
    validation = _validation(spec, operation)
    if validation is not None:
        bodies[validation["type"]] = validation
    bodies[ABOUT_BLANK] = dict(UNHANDLED_PROBLEM)  # as errors._unhandled writes it
    return bodies


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a `$ref` names, or the first non-null branch of an `anyOf`."""
    if "$ref" in schema:
        return resolve(spec, spec["components"]["schemas"][schema["$ref"].removeprefix(SCHEMAS)])
    branches = [b for b in schema.get("anyOf", ()) if b.get("type") != "null"]
    return resolve(spec, branches[0]) if len(branches) == 1 else schema


def media_example(spec: dict[str, Any], media: dict[str, Any]) -> Any:
    """The first example of a media type: its own, else its schema's; None without one."""
    if "examples" in media:
        return next(iter(media["examples"].values()))["value"]
    if "example" in media:
        return media["example"]
    schema = resolve(spec, media.get("schema", {}))
    if schema.get("examples"):
        return schema["examples"][0]
    return schema.get("example")


def _parameter_example(operation_id: str, name: str) -> Any:
    key = name.lower()
    return PARAMETER_EXAMPLES.get((operation_id, key), PARAMETER_EXAMPLES.get(key))


def _stream_text(spec: dict[str, Any], media: dict[str, Any]) -> str:
    """An event stream as it is sent: each event model's examples, in the document's order."""
    item = media["itemSchema"]
    refs = list(item.get("discriminator", {}).get("mapping", {}).values()) or [item["$ref"]]
    frames = []
    for ref in refs:
        for event in spec["components"]["schemas"][ref.removeprefix(SCHEMAS)]["examples"]:
            lines = [f"event: {event['event']}"]
            if "id" in event:
                lines.append(f"id: {event['id']}")
            lines.append(f"data: {event['data']}")
            frames.append("\n".join(lines) + "\n\n")
    return "".join(frames)


def is_file(schema: dict[str, Any]) -> bool:
    return schema.get("format") == "binary" or "contentMediaType" in schema


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) of every operation of the document, in its order."""
    for path, path_item in spec.get("paths", {}).items():
        for method in METHODS:
            if method in path_item:
                yield path, method, path_item[method]


def webhook_operations(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event type, operation) of each outgoing webhook the document describes."""
    for event, path_item in spec.get("webhooks", {}).items():
        yield event, path_item["post"]


def add_examples(spec: dict[str, Any]) -> dict[str, Any]:
    """Add parameter, problem and event-stream examples to every operation."""
    for path, method, operation in operations(spec):
        for parameter in operation.get("parameters", []):
            if "example" not in parameter and "examples" not in parameter:
                example = _parameter_example(operation["operationId"], parameter["name"])
                if example is not None:
                    parameter["example"] = example
        problems = problem_examples(spec, path, operation, method)
        for status, response in operation.get("responses", {}).items():
            content = response.get("content", {})
            if PROBLEM_JSON in content and int(status) in PROBLEM_TYPES:
                content[PROBLEM_JSON]["examples"] = {
                    kind.rsplit("/", 1)[-1]: {
                        "summary": problems[kind]["title"],
                        "value": problems[kind],
                    }
                    for kind in PROBLEM_TYPES[int(status)]
                    if kind in problems
                }
            if EVENT_STREAM in content:
                content[EVENT_STREAM]["example"] = _stream_text(spec, content[EVENT_STREAM])
    return spec
