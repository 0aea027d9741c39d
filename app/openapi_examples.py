"""The OpenAPI document's examples, added in one place after it is built (`add_examples`).

Request and response bodies carry their examples on the pydantic models (next to the
fields); this module adds what no model holds: an example for every parameter, one problem
body per problem `type` on every error response, the text of each event stream, and an
`x-codeSamples` curl command for every operation, built from all of those.
"""

from __future__ import annotations

import json
import shlex
from typing import Any
from urllib.parse import quote, urlencode

from app.errors import (
    ABOUT_BLANK,
    PROBLEM_BASE,
    PROBLEM_JSON,
    PROBLEM_TYPES,
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
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)
from app.schemas.api_keys import API_KEY_EXAMPLE
from app.schemas.gallery import CURSOR_EXAMPLE, PACK_ID_EXAMPLE, PROMPT_ID_EXAMPLE
from app.schemas.generations import IMAGE_ID_EXAMPLE, JOB_ID_EXAMPLE
from app.schemas.me import LEDGER_PAGE_CURSOR_EXAMPLE
from app.schemas.outgoing import ENDPOINT_EXAMPLE
from app.schemas.packs import SET_ID_EXAMPLE
from app.services.webhooks import WebhookFailed

BASE_URL = "http://127.0.0.1:8000"
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

# What a webhook request carries that no schema can describe: the provider's signature over
# the body. Shown in the curl samples only.
SIGNED_REQUESTS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "receive_stripe_webhook": (
        [
            "Stripe-Signature: t=1777885923,"
            "v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"
        ],
        {"id": "evt_1PqRsT2eZvKYlo2C", "type": "checkout.session.completed", "data": {}},
    ),
    "receive_clerk_webhook": (
        [
            "svix-id: msg_2abcDEF",
            "svix-timestamp: 1777885923",
            "svix-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
        ],
        {"type": "user.created", "data": {"id": "user_2abcDEF"}},
    ),
}


def problem_examples() -> dict[str, dict[str, Any]]:
    """One problem body per problem `type`, as the error classes render it."""
    raised = [
        BadRequest("The cursor is not one this API handed out."),
        RepeatedHeader("Idempotency-Key"),
        Unauthorized("The token has expired."),
        InsufficientCredits(balance=0, cost=1),
        Forbidden("API keys cannot be used here: sign in."),
        NotFound("No such job."),
        MethodNotAllowed("PUT is not allowed here."),
        Conflict("This email address already belongs to another account."),
        PayloadTooLarge("The request body is larger than the limit of 1048576 bytes."),
        Unprocessable("A edit needs a source image in `reference`."),
        TooManyRequests(
            "At most 30 generations per minute; retry in 12 s.",
            limit=30,
            window_seconds=60,
            retry_after=12,
        ),
        HeadersTooLarge("The request's headers are larger than the limit of 16384 bytes."),
        WebhookFailed("The event could not be applied; it will be retried."),
        ServiceUnavailable("Storage is unavailable; try again shortly."),
    ]
    bodies = {body["type"]: body for body in (error.to_problem() for error in raised)}
    # As errors._validation_error and errors._unhandled write them.
    bodies[PROBLEM_BASE + "validation"] = {
        "type": PROBLEM_BASE + "validation",
        "title": "Invalid request",
        "status": 422,
        "detail": "body.prompt: String should have at most 2000 characters",
        "errors": [
            {
                "loc": ["body", "prompt"],
                "msg": "String should have at most 2000 characters",
                "type": "string_too_long",
            }
        ],
    }
    bodies[ABOUT_BLANK] = {
        "type": ABOUT_BLANK,
        "title": "Internal Server Error",
        "status": 500,
        "detail": "Something went wrong on our side; it was logged.",
    }
    return bodies


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a `$ref` names, or the first non-null branch of an `anyOf`."""
    if "$ref" in schema:
        return _resolve(spec, spec["components"]["schemas"][schema["$ref"].removeprefix(SCHEMAS)])
    branches = [b for b in schema.get("anyOf", ()) if b.get("type") != "null"]
    return _resolve(spec, branches[0]) if len(branches) == 1 else schema


def media_example(spec: dict[str, Any], media: dict[str, Any]) -> Any:
    """The first example of a media type: its own, else its schema's; None without one."""
    if "examples" in media:
        return next(iter(media["examples"].values()))["value"]
    if "example" in media:
        return media["example"]
    schema = _resolve(spec, media.get("schema", {}))
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


def _is_file(schema: dict[str, Any]) -> bool:
    return schema.get("format") == "binary" or "contentMediaType" in schema


def _needs_token(operation: dict[str, Any]) -> bool:
    requirements = operation.get("security", [])
    return bool(requirements) and all(requirements)


def _success(operation: dict[str, Any]) -> dict[str, Any]:
    for status, response in operation.get("responses", {}).items():
        if str(status).startswith("2") and response.get("content"):
            content: dict[str, Any] = response["content"]
            return content
    return {}


def curl_sample(spec: dict[str, Any], method: str, path: str, operation: dict[str, Any]) -> str:
    """A curl command for the operation, from its parameters' and body's examples."""
    operation_id = operation.get("operationId", "")
    query: list[tuple[str, Any]] = []
    headers: list[str] = []
    for parameter in operation.get("parameters", []):
        value = parameter.get("example")
        name, where = parameter["name"], parameter["in"]
        if where == "path":
            path = path.replace("{" + name + "}", quote(str(value), safe="/"))
        elif where == "query":
            values = value if isinstance(value, list) else [value]
            query += [(name, json.dumps(v) if isinstance(v, bool) else v) for v in values]
        elif where == "header":
            headers.append(f"{'-'.join(w.capitalize() for w in name.split('-'))}: {value}")
    url = BASE_URL + path + ("?" + urlencode(query) if query else "")
    parts = ["curl"] + ([] if method == "get" else ["-X", method.upper()]) + [shlex.quote(url)]
    lines = [" ".join(parts)]
    if _needs_token(operation):
        lines.append('-H "Authorization: Bearer $ATELIER_TOKEN"')
    success = _success(operation)
    if EVENT_STREAM in success:
        lines.append("-N -H 'Accept: text/event-stream'")
    signed_headers, signed_body = SIGNED_REQUESTS.get(operation_id, ([], None))
    lines += [f"-H {shlex.quote(header)}" for header in headers + signed_headers]
    body_content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in body_content or signed_body is not None:
        body = signed_body
        if body is None:
            body = media_example(spec, body_content["application/json"])
        lines.append("-H 'Content-Type: application/json'")
        lines.append(f"-d {shlex.quote(json.dumps(body))}")
    elif "multipart/form-data" in body_content:
        form = _resolve(spec, body_content["multipart/form-data"]["schema"])
        for field, schema in form.get("properties", {}).items():
            if _is_file(schema):
                lines.append(f"-F {shlex.quote(field + '=@icon.png')}")
    if any(_is_file(media.get("schema", {})) for media in success.values()):
        lines.append("-OJ")  # saved under the name the URL or Content-Disposition gives
    return " \\\n  ".join(lines)


def add_examples(spec: dict[str, Any]) -> dict[str, Any]:
    """Add parameter, problem and event-stream examples and a curl sample to every operation."""
    problems = problem_examples()
    for path, path_item in spec.get("paths", {}).items():
        for method in METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            for parameter in operation.get("parameters", []):
                if "example" not in parameter and "examples" not in parameter:
                    example = _parameter_example(operation["operationId"], parameter["name"])
                    if example is not None:
                        parameter["example"] = example
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if PROBLEM_JSON in content and int(status) in PROBLEM_TYPES:
                    content[PROBLEM_JSON]["examples"] = {
                        kind.rsplit("/", 1)[-1]: {
                            "summary": problems[kind]["title"],
                            "value": problems[kind],
                        }
                        for kind in PROBLEM_TYPES[int(status)]
                    }
                if EVENT_STREAM in content:
                    content[EVENT_STREAM]["example"] = _stream_text(spec, content[EVENT_STREAM])
            operation["x-codeSamples"] = [
                {
                    "lang": "Shell",
                    "label": "curl",
                    "source": curl_sample(spec, method, path, operation),
                }
            ]
    return spec
