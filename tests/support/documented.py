"""An answer's headers against those its documented response declares: each one sent is
declared, each one declared `required` is sent. tests/api/test_contract.py checks every
answer schemathesis draws out; the tests of answers it cannot draw out (a 415, a redirect,
a URL check still running) check theirs with `assert_documented_headers`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from app.headers import security_headers

# Headers no response lists, as they are not the operation's to say: HTTP's own framing
# (Content-Type is the response's media type), the request id on every answer
# (app.observability), the security headers (app.headers; HSTS in production only), and
# what caches and proxies are told: `Cache-Control` (`no-store` on every /v1/ answer but
# those that set their own) and `Vary` (app.observability, app.middleware), and the
# streams' `X-Accel-Buffering`, which nginx reads and does not pass on.
NOT_THE_OPERATIONS = frozenset(
    {
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "date",
        "server",
        "x-request-id",
        *(name.decode() for name, _ in security_headers("/", hsts=True)),
        "cache-control",
        "vary",
        "x-accel-buffering",
    }
)


def header_gaps(declared: Mapping[str, Mapping[str, Any]], sent: Iterable[str]) -> list[str]:
    """What is wrong between the headers a response declares (name: its OpenAPI header) and
    those an answer of it carried, as readable lines; none when they agree."""
    names = {name.lower() for name in sent}
    documented = {name.lower(): header for name, header in declared.items()}
    undeclared = sorted(names - documented.keys() - NOT_THE_OPERATIONS)
    missing = sorted(
        name for name, header in documented.items() if header.get("required") and name not in names
    )
    return [f"sent, not declared: {name}" for name in undeclared] + [
        f"declared required, not sent: {name}" for name in missing
    ]


def assert_documented_headers(
    spec: Mapping[str, Any], method: str, path: str, response: httpx.Response
) -> None:
    """`response` (to `method` on the document's `path`, a template) carries the headers its
    documented response declares, and no other."""
    documented = spec["paths"][path][method.lower()]["responses"].get(str(response.status_code))
    where = f"{method.upper()} {path} {response.status_code}"
    assert documented is not None, f"{where} is not documented"
    gaps = header_gaps(documented.get("headers", {}), response.headers.keys())
    assert not gaps, f"{where}: {gaps}"
