"""Every operation's `x-codeSamples` curl command (`add_samples`).

A sample is built as a request (`sample_request`: method, path, parameters, headers, body)
and rendered to curl (`render_curl`), so the request the docs show is the one that
tests/api/test_openapi_samples.py sends to a seeded app. A sample carries what a first call
needs and nothing more: path parameters, required query parameters and headers, the body,
the token where the operation takes one (optional tokens included), and a fresh
Idempotency-Key where the operation accepts one. Optional parameters (a cursor, a filter)
are left out: their examples are on the parameters.
"""

from __future__ import annotations

import json
import shlex
import textwrap
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from app.openapi_examples import EVENT_STREAM, is_file, media_example, operations, resolve

BASE_URL = "http://127.0.0.1:8000"
# What the shell puts in a header that must be new on every call.
NEW_KEY = "$(openssl rand -hex 16)"  # openssl is there where uuidgen often is not
# Sent where accepted though optional: a retried call is then applied once.
IDEMPOTENCY_KEY = "Idempotency-Key"
# The variable holding an operation's bearer token where it is not the user's.
TOKEN_VARIABLES = {"metrics": "METRICS_TOKEN"}
DEFAULT_TOKEN = "ATELIER_TOKEN"
FILE_NAME = "icon.png"

# Samples that cannot succeed as written, shown to illustrate a request: a provider's
# signature over the body, or a signature the API hands out. Labelled so in the docs.
ILLUSTRATIONS = {
    "receive_stripe_webhook": (
        "Illustration only: Stripe sends this, signed with the endpoint's secret; "
        "a made-up Stripe-Signature is refused (400)."
    ),
    "receive_clerk_webhook": (
        "Illustration only: Clerk sends this through Svix, signed with the endpoint's "
        "secret; made-up svix-* headers are refused (400)."
    ),
    "get_file": (
        "Illustration only: open the signed URL an image's `url` or a download hands out; "
        "made-up exp and sig are refused (403)."
    ),
}

# What a webhook request carries that no schema can describe: the provider's signature over
# the body.
SIGNED_REQUESTS: dict[str, tuple[list[tuple[str, str]], dict[str, Any]]] = {
    "receive_stripe_webhook": (
        [
            (
                "Stripe-Signature",
                "t=1777885923,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
            )
        ],
        {"id": "evt_1PqRsT2eZvKYlo2C", "type": "checkout.session.completed", "data": {}},
    ),
    "receive_clerk_webhook": (
        [
            ("svix-id", "msg_2abcDEF"),
            ("svix-timestamp", "1777885923"),
            ("svix-signature", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
        ],
        {"type": "user.created", "data": {"id": "user_2abcDEF"}},
    ),
}

_NO_BODY = object()


@dataclass(frozen=True)
class SampleRequest:
    """The request an operation's sample sends."""

    operation_id: str
    method: str  # upper case
    path: str  # the template, e.g. /v1/images/{image_id}
    path_params: dict[str, str] = field(default_factory=dict)
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)  # NEW_KEY: a fresh key
    token: str | None = None  # the variable holding the bearer token; None: no token
    body: Any = _NO_BODY  # JSON
    files: list[str] = field(default_factory=list)  # multipart fields, each FILE_NAME
    stream: bool = False  # an event stream: read as it comes
    redirects: bool = False  # a documented 3xx: follow it
    download: bool = False  # bytes: saved to a file
    illustration: str | None = None  # why it cannot succeed as written

    @property
    def has_body(self) -> bool:
        return self.body is not _NO_BODY

    def url(self, path_params: dict[str, str] | None = None, base: str = BASE_URL) -> str:
        """The URL, with `path_params` (default: the examples') in the path."""
        path = self.path
        for name, value in (path_params or self.path_params).items():
            path = path.replace("{" + name + "}", quote(value, safe="/"))
        return base + path + ("?" + urlencode(self.query) if self.query else "")

    def http_headers(self, token: str | None) -> dict[str, str]:
        """The headers an HTTP client sends, `token` as the bearer token, JSON's and
        multipart's Content-Type aside (the client sets them)."""
        sent = {
            name: str(uuid.uuid4()) if value == NEW_KEY else value for name, value in self.headers
        }
        if self.token is not None and token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if self.stream:
            sent["Accept"] = EVENT_STREAM
        return sent


def header_name(name: str) -> str:
    """A header's usual spelling: `last-event-id` is Last-Event-ID."""
    return "-".join("ID" if word.lower() == "id" else word.capitalize() for word in name.split("-"))


def _bearer_schemes(spec: dict[str, Any]) -> set[str]:
    schemes = spec.get("components", {}).get("securitySchemes", {})
    return {name for name, scheme in schemes.items() if scheme.get("scheme") == "bearer"}


def _success(operation: dict[str, Any]) -> dict[str, Any]:
    for status, response in operation.get("responses", {}).items():
        if str(status).startswith("2") and response.get("content"):
            content: dict[str, Any] = response["content"]
            return content
    return {}


def _query_value(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [json.dumps(v) if isinstance(v, bool) else str(v) for v in values]


def sample_request(
    spec: dict[str, Any], path: str, method: str, operation: dict[str, Any]
) -> SampleRequest:
    """The request an operation's sample sends, from its parameters' and body's examples."""
    operation_id = operation.get("operationId", "")
    path_params: dict[str, str] = {}
    query: list[tuple[str, str]] = []
    headers: list[tuple[str, str]] = []
    for parameter in operation.get("parameters", []):
        name, where, value = parameter["name"], parameter["in"], parameter.get("example")
        if where == "header" and header_name(name) == IDEMPOTENCY_KEY:
            headers.append((IDEMPOTENCY_KEY, NEW_KEY))
        elif where == "path":
            path_params[name] = str(value)
        elif not parameter.get("required"):
            continue
        elif where == "query":
            query += [(name, v) for v in _query_value(value)]
        elif where == "header":
            headers.append((header_name(name), str(value)))
    requirements = operation.get("security", [])
    bearer = _bearer_schemes(spec)
    token = None
    if any(bearer & set(requirement) for requirement in requirements):
        token = TOKEN_VARIABLES.get(operation_id, DEFAULT_TOKEN)
    signed_headers, body = SIGNED_REQUESTS.get(operation_id, ([], _NO_BODY))
    headers += signed_headers
    files: list[str] = []
    body_content = operation.get("requestBody", {}).get("content", {})
    if body is _NO_BODY and "application/json" in body_content:
        body = media_example(spec, body_content["application/json"])
    elif body is _NO_BODY and "multipart/form-data" in body_content:
        form = resolve(spec, body_content["multipart/form-data"]["schema"])
        files = [name for name, schema in form.get("properties", {}).items() if is_file(schema)]
    success = _success(operation)
    redirects = any(str(status).startswith("3") for status in operation.get("responses", {}))
    return SampleRequest(
        operation_id=operation_id,
        method=method.upper(),
        path=path,
        path_params=path_params,
        query=query,
        headers=headers,
        token=token,
        body=body,
        files=files,
        stream=EVENT_STREAM in success,
        redirects=redirects,
        download=redirects or any(is_file(media.get("schema", {})) for media in success.values()),
        illustration=ILLUSTRATIONS.get(operation_id),
    )


def _header_option(name: str, value: str) -> str:
    header = f"{name}: {value}"
    # Double quotes where the shell is meant to expand something ($ATELIER_TOKEN, NEW_KEY).
    return f'-H "{header}"' if "$" in value else f"-H {shlex.quote(header)}"


def render_curl(request: SampleRequest) -> str:
    """The request as a curl command (preceded by a comment when it is an illustration)."""
    method = [] if request.method == "GET" else ["-X", request.method]
    options = ["-L"] if request.redirects else []
    lines = [" ".join(["curl", *options, *method, shlex.quote(request.url())])]
    if request.token is not None:
        lines.append(_header_option("Authorization", f"Bearer ${request.token}"))
    if request.stream:
        lines.append(f"-N -H 'Accept: {EVENT_STREAM}'")
    lines += [_header_option(name, value) for name, value in request.headers]
    if request.has_body:
        lines.append("-H 'Content-Type: application/json'")
        lines.append(f"-d {shlex.quote(json.dumps(request.body))}")
    lines += [f"-F {shlex.quote(name + '=@' + FILE_NAME)}" for name in request.files]
    if request.download:
        lines.append("-OJ")  # saved under the name the URL or Content-Disposition gives
    command = " \\\n  ".join(lines)
    if request.illustration is None:
        return command
    comment = textwrap.wrap(
        request.illustration,
        88,
        initial_indent="# ",
        subsequent_indent="# ",
        break_on_hyphens=False,
    )
    return "\n".join([*comment, command])


def sample_requests(spec: dict[str, Any]) -> list[SampleRequest]:
    """Every operation's sample request, in the document's order."""
    return [sample_request(spec, *where) for where in operations(spec)]


def add_samples(spec: dict[str, Any]) -> dict[str, Any]:
    """Give every operation a curl sample (`x-codeSamples`), labelled when an illustration."""
    for path, method, operation in operations(spec):
        request = sample_request(spec, path, method, operation)
        label = "curl (illustration)" if request.illustration else "curl"
        operation["x-codeSamples"] = [
            {"lang": "Shell", "label": label, "source": render_curl(request)}
        ]
    return spec
