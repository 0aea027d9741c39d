"""Security headers on every answer (JSON, problems, streams, files and the docs pages), and
the middlewares' one read of a request header."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The API answers JSON, SSE and image bytes: none of them may run, embed or load anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# /docs and /redoc are HTML that loads Swagger UI or ReDoc (and the favicon) from this
# service, under DOCS_STATIC_URL (fastapi-offline's copies), with an inline bootstrap script
# and inline styles; ReDoc's search index runs in a blob: worker. Nothing else is allowed.
DOCS_STATIC_URL = "/docs-assets"
DOCS_CSP = (
    "default-src 'none'; "
    "script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; "
    "connect-src 'self'; worker-src blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
HSTS = "max-age=63072000; includeSubDomains"


def first_header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    """The first value of request header `name` (lower case, as ASGI gives names), read from
    the scope's raw list: the middlewares look for one header each, per request, without
    building a Headers object."""
    for key, value in scope["headers"]:
        if key == name:
            value_bytes: bytes = value
            return value_bytes
    return None


def security_headers(path: str, *, hsts: bool) -> list[tuple[bytes, bytes]]:
    """The headers an answer on `path` carries (HSTS only when `hsts`: production)."""
    csp = DOCS_CSP if path in DOCS_PATHS else API_CSP
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", csp.encode()),
    ]
    if hsts:
        headers.append((b"strict-transport-security", HSTS.encode()))
    return headers


class SecurityHeaders:
    """`security_headers` for any path, built once (they depend only on whether the path is
    a docs page). `app.observability.RequestContextMiddleware` adds them to every HTTP
    answer, keeping any a route set itself.

    Starlette sends a 500 from outside every user middleware, so `app.errors` adds the same
    headers to that answer itself."""

    def __init__(self, *, hsts: bool) -> None:
        self._api = security_headers("/", hsts=hsts)
        self._docs = security_headers(next(iter(DOCS_PATHS)), hsts=hsts)

    def __call__(self, path: str) -> list[tuple[bytes, bytes]]:
        return self._docs if path in DOCS_PATHS else self._api
