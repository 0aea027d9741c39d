"""The docs stand alone: every operation of the OpenAPI document has a request example (a curl
sample, and examples of its parameters and body) and response examples (its success answer and
every problem it documents), and every example in the document is valid under its schema."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jsonschema import Draft202012Validator

from app.config import Settings
from app.errors import PROBLEM_BASE, PROBLEM_JSON, PROBLEM_TYPES
from app.main import create_app
from app.openapi_examples import (
    EVENT_STREAM,
    is_file,
    media_example,
    problem_examples,
    webhook_operations,
)
from app.openapi_examples import operations as paths_and_operations
from app.schemas.outgoing import SECRET_EXAMPLE

# Subschemas, by the keywords that hold one, a list of them, or a map of them.
ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contentSchema")
MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
MAP = ("properties", "$defs", "patternProperties")

Spec = dict[str, Any]


@pytest.fixture(scope="module")
def spec() -> Spec:
    document: Spec = create_app(Settings(_env_file=None)).openapi()
    return document


def operations(spec: Spec) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every operation, the outgoing webhooks' included, with a label."""
    for path, method, operation in paths_and_operations(spec):
        yield f"{method.upper()} {path}", operation
    for event, operation in webhook_operations(spec):
        yield f"webhook {event}", operation


def answerable(spec: Spec, path: str, operation: dict[str, Any], status: str) -> set[str]:
    """The problem types of `status` that the operation can answer."""
    return set(PROBLEM_TYPES[int(status)]) & set(problem_examples(spec, path, operation))


def _has_example(spec: Spec, media: dict[str, Any]) -> bool:
    return media_example(spec, media) is not None


def lacking_examples(spec: Spec) -> list[str]:
    """What each operation lacks: a curl sample, a parameter's or the body's example, an
    example of its success answer or of each problem it documents."""
    missing: list[str] = []
    for path, method, operation in paths_and_operations(spec):
        label = f"{method.upper()} {path}"
        samples = operation.get("x-codeSamples") or []
        if not any(s.get("lang") == "Shell" and "curl" in s.get("source", "") for s in samples):
            missing.append(f"{label}: no curl sample (x-codeSamples)")
        for parameter in operation.get("parameters", []):
            if "example" not in parameter and "examples" not in parameter:
                missing.append(f"{label}: no example of parameter {parameter['name']}")
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            if media_type == "multipart/form-data":  # a file: the curl sample's -F shows it
                if not any("-F " in s.get("source", "") for s in samples):
                    missing.append(f"{label}: no example of its {media_type} body")
            elif not _has_example(spec, media):
                missing.append(f"{label}: no example of its {media_type} body")
        for status, response in operation["responses"].items():
            for media_type, media in response.get("content", {}).items():
                if str(status).startswith("2") and is_file(media.get("schema", {})):
                    continue  # bytes: the curl sample saves them (-OJ)
                if media_type == PROBLEM_JSON:
                    shown = {e["value"]["type"] for e in media.get("examples", {}).values()}
                    if not shown or shown != answerable(spec, path, operation, status):
                        missing.append(f"{label}: {status} lacks an example of a problem type")
                elif not _has_example(spec, media):
                    missing.append(f"{label}: no example of its {status} {media_type} answer")
    for event, operation in webhook_operations(spec):  # what a receiver gets: no curl, no answer
        for parameter in operation["parameters"]:
            if "example" not in parameter:
                missing.append(f"webhook {event}: no example of header {parameter['name']}")
        if media_example(spec, operation["requestBody"]["content"]["application/json"]) is None:
            missing.append(f"webhook {event}: no example of its body")
    return missing


def _nodes(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema within `schema`, itself included, with where it is."""
    if not isinstance(schema, dict):
        return
    yield where, schema
    for key in ONE:
        yield from _nodes(schema.get(key), f"{where}.{key}")
    for key in MANY:
        for index, branch in enumerate(schema.get(key, ())):
            yield from _nodes(branch, f"{where}.{key}[{index}]")
    for key in MAP:
        for name, branch in schema.get(key, {}).items():
            yield from _nodes(branch, f"{where}.{key}.{name}")


def _errors(spec: Spec, schema: dict[str, Any], instance: Any, where: str) -> list[str]:
    root = {**schema, "components": spec["components"]}
    validator = Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [
        f"{where}: {error.message} (at {error.json_path})"
        for error in validator.iter_errors(instance)
    ]


def _schema_examples(node: dict[str, Any]) -> list[Any]:
    examples = list(node.get("examples", []))
    return examples + ([node["example"]] if "example" in node else [])


def _media_examples(media: dict[str, Any]) -> list[Any]:
    named = [example["value"] for example in media.get("examples", {}).values()]
    return named + ([media["example"]] if "example" in media else [])


def parse_stream(text: str) -> list[dict[str, str]]:
    """The events of an event stream's text (comments and blank lines between them dropped)."""
    events = []
    for frame in text.split("\n\n"):
        fields = [line.partition(":") for line in frame.splitlines() if line[:1] != ":"]
        if fields:
            events.append({name: value.removeprefix(" ") for name, _, value in fields})
    return events


def _stream_errors(spec: Spec, media: dict[str, Any], where: str) -> list[str]:
    item = media["itemSchema"]
    mapping = item.get("discriminator", {}).get("mapping", {})
    events = parse_stream(media.get("example", ""))
    errors = [] if events else [f"{where}: the example holds no event"]
    for index, event in enumerate(events):
        at = f"{where} event {index}"
        errors += _errors(spec, item, event, at)
        ref = mapping.get(event.get("event", ""), item.get("$ref"))
        if ref is None:
            continue
        model = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        try:
            data = json.loads(event.get("data", ""))
        except ValueError:
            errors.append(f"{at}: data is not JSON")
            continue
        errors += _errors(spec, model["properties"]["data"]["contentSchema"], data, at + " data")
    return errors


def invalid_examples(spec: Spec) -> list[str]:
    """Every example that its schema refuses: in components, parameters and media types,
    and each event of an event stream's example."""
    errors: list[str] = []
    for name, schema in spec["components"]["schemas"].items():
        for where, node in _nodes(schema, name):
            for example in _schema_examples(node):
                errors += _errors(spec, node, example, where)
    for label, operation in operations(spec):
        for parameter in operation.get("parameters", []):
            where = f"{label} parameter {parameter['name']}"
            for example in _schema_examples(parameter):
                errors += _errors(spec, parameter["schema"], example, where)
        media_types = [
            (f"{label} body {media_type}", media)
            for media_type, media in operation.get("requestBody", {}).get("content", {}).items()
        ] + [
            (f"{label} {status} {media_type}", media)
            for status, response in operation["responses"].items()
            for media_type, media in response.get("content", {}).items()
        ]
        for where, media in media_types:
            if "itemSchema" in media:
                errors += _stream_errors(spec, media, where)
            elif "schema" in media:
                for example in _media_examples(media):
                    errors += _errors(spec, media["schema"], example, where)
    return errors


def test_every_operation_has_request_and_response_examples(spec: Spec) -> None:
    assert lacking_examples(spec) == []


def test_every_example_is_valid_under_its_schema(spec: Spec) -> None:
    assert invalid_examples(spec) == []


def test_each_webhooks_example_headers_sign_its_example_body(spec: Spec) -> None:
    """A receiver can test its verifier on the document: the signature is Standard Webhooks'
    HMAC, computed here by hand, of the body example as compact JSON, under the endpoint
    example's secret."""
    secret = base64.b64decode(SECRET_EXAMPLE.removeprefix("whsec_"))
    for event, operation in webhook_operations(spec):
        headers = {p["name"]: p["example"] for p in operation["parameters"]}
        body = operation["requestBody"]["content"]["application/json"]["example"]
        assert body["type"] == event
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode()
        signed += json.dumps(body, separators=(",", ":")).encode()
        digest = hmac.new(secret, signed, hashlib.sha256).digest()
        assert headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode(), event


def _problems(spec: Spec, path: str, method: str, status: str) -> dict[str, Any]:
    media = spec["paths"][path][method]["responses"][status]["content"][PROBLEM_JSON]
    return {name: example["value"] for name, example in media["examples"].items()}


def test_problem_examples_fit_the_operation(spec: Spec) -> None:
    assert list(_problems(spec, "/v1/me", "get", "500")) == ["about:blank"]
    stripe = _problems(spec, "/webhooks/stripe", "post", "500")
    assert stripe["webhook-failed"]["status"] == 500
    assert _problems(spec, "/v1/images/{image_id}", "get", "404")["not-found"]["detail"] == (
        "No such image."
    )
    assert _problems(spec, "/v1/jobs/{job_id}", "get", "404")["not-found"]["detail"] == (
        "No such job."
    )
    ledger = _problems(spec, "/v1/credits/ledger", "get", "400")
    assert ledger["repeated-header"]["header"] == "Authorization"  # the token's
    assert "cursor" in ledger["bad-request"]["detail"]
    # no token, so no repeated Authorization header to refuse
    assert list(_problems(spec, "/webhooks/clerk", "post", "400")) == ["bad-request"]
    too_large = problem_examples(spec, "/healthz", {})[PROBLEM_BASE + "headers-too-large"]
    assert too_large["detail"].endswith(" of 32768 bytes.")  # MAX_HEADER_BYTES' default


def test_an_operation_that_loses_an_example_is_named(spec: Spec) -> None:
    broken = copy.deepcopy(spec)
    schemas, paths = broken["components"]["schemas"], broken["paths"]
    del schemas["PromptCreate"]["examples"]
    del schemas["Me"]["examples"]
    del paths["/healthz"]["get"]["x-codeSamples"]
    del paths["/v1/jobs/{job_id}"]["get"]["parameters"][0]["example"]
    del paths["/v1/images/{image_id}"]["get"]["responses"]["404"]["content"][PROBLEM_JSON][
        "examples"
    ]["not-found"]
    del paths["/v1/feed/events"]["get"]["responses"]["200"]["content"][EVENT_STREAM]["example"]
    assert lacking_examples(broken) == [
        "GET /healthz: no curl sample (x-codeSamples)",
        "GET /v1/me: no example of its 200 application/json answer",
        "GET /v1/jobs/{job_id}: no example of parameter job_id",
        "GET /v1/feed/events: no example of its 200 text/event-stream answer",
        "GET /v1/images/{image_id}: 404 lacks an example of a problem type",
        "POST /v1/prompts: no example of its application/json body",
    ]


def test_an_example_its_schema_refuses_is_named(spec: Spec) -> None:
    broken = copy.deepcopy(spec)
    schemas, paths = broken["components"]["schemas"], broken["paths"]
    schemas["Job"]["examples"][0]["status"] = "paused"
    paths["/v1/jobs"]["get"]["parameters"][-1]["example"] = 0  # limit
    stream = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    stream[EVENT_STREAM]["example"] = 'event: job\nid: 5\ndata: {"id": 1}\n\n'
    errors = invalid_examples(broken)
    assert any(e.startswith("Job: 'paused' is not one of") for e in errors), errors
    assert any(e.startswith("GET /v1/jobs parameter limit: 0 is less than") for e in errors)
    assert any(e.startswith("GET /v1/jobs/{job_id}/events 200") for e in errors), errors
    assert len(errors) >= 3


def _validation_examples(spec: Spec) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, method, operation in paths_and_operations(spec):
        media = operation["responses"].get("422", {}).get("content", {}).get(PROBLEM_JSON, {})
        example = media.get("examples", {}).get("validation")
        if example is not None:
            yield path, method, example["value"]


async def test_each_validation_example_is_what_the_operation_answers(
    spec: Spec,
    app: FastAPI,
    client: httpx.AsyncClient,
    auth_headers: Callable[..., dict[str, str]],
) -> None:
    """The 422 `validation` examples are made from the operation's own models and parameters:
    sending what each says is wrong (a body without its field, an id that is no UUID, a
    number over its maximum) with every other parameter as its own example gets that very
    problem from the app."""
    admin = "user_examples_admin"
    app.state.settings.admin_user_ids.append(admin)  # the admin routes' examples too
    replayed = 0
    for path, method, example in _validation_examples(spec):
        operation = spec["paths"][path][method]
        (error,) = example["errors"][:1]
        where, name = error["loc"][0], error["loc"][1]
        if where == "body" and error["type"] != "missing":
            continue  # a field too many or of a wrong type: made from the model alone
        values: dict[str, dict[str, str]] = {"path": {}, "query": {}, "header": {}}
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path" or parameter.get("required"):
                values[parameter["in"]][parameter["name"]] = str(parameter["example"])
        request: dict[str, Any] = {"json": {}}
        if where == "body" and name == "file":
            request = {"files": {"other": ("a.txt", b"x")}}
        elif where != "body":
            bad = {"uuid_parsing": "not-a-uuid", "int_parsing": "soon"}.get(error["type"])
            values[where][name] = bad if bad is not None else _over(error)
            request = {}
        url = path
        for parameter, value in values["path"].items():
            url = url.replace("{" + parameter + "}", value)
        assert "{" not in url, url
        headers = {**auth_headers(admin), **values["header"]}
        response = await client.request(
            method.upper(), url, params=values["query"], headers=headers, **request
        )
        assert response.status_code == 422, (method, path, response.text)
        assert response.json() == example, (method, path)
        replayed += 1
    assert replayed >= 30


def _over(error: dict[str, Any]) -> str:
    """A value just over the limit an error names: a text of `(got N)` characters, or a
    number one over `less than or equal to N`."""
    msg = error["msg"]
    if "(got " in msg:
        return "x" * int(msg.split("(got ")[1].rstrip(")").replace(",", ""))
    return str(int(msg.rsplit(" ", 1)[-1]) + 1)
