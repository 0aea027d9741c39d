"""One error hierarchy, rendered as RFC 9457 problem+json by one set of handlers."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import REQUEST_ID_SCOPE_KEY

log = logging.getLogger("atelier.errors")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://atelier.dev/problems/"


class Problem(BaseModel):
    """RFC 9457 problem details; extra members (such as `balance`) may follow."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "type": "https://atelier.dev/problems/insufficient-credits",
                "title": "Not enough credits",
                "status": 402,
                "detail": "This costs 1 credit and the balance is 0.",
                "balance": 0,
                "cost": 1,
            }
        },
    )

    type: str = Field(default="about:blank", description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class AppError(Exception):
    status: int = 500
    slug: str | None = None
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def to_problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug if self.slug else "about:blank",
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body


class BadRequest(AppError):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(AppError):
    status, slug, title = 401, "unauthorized", "Not authenticated"

    def __init__(self, detail: str | None = None, *, sent: bool = True, **extra: Any) -> None:
        # RFC 6750 §3.1: no error code when the request carried no token at all.
        challenge = 'Bearer error="invalid_token"' if sent else "Bearer"
        super().__init__(detail, headers={"WWW-Authenticate": challenge}, **extra)


class Forbidden(AppError):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(AppError):
    status, slug, title = 409, "conflict", "Conflict"


class MethodNotAllowed(AppError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class PayloadTooLarge(AppError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class Unprocessable(AppError):
    status, slug, title = 422, "unprocessable", "Unprocessable request"


class InsufficientCredits(AppError):
    status, slug, title = 402, "insufficient-credits", "Not enough credits"

    def __init__(self, *, balance: int, cost: int) -> None:
        super().__init__(
            f"This costs {cost} credit{'s' if cost != 1 else ''} and the balance is {balance}.",
            balance=balance,
            cost=cost,
        )


class TooManyRequests(AppError):
    """Over a per-user rate limit: the caller sends `headers` (Retry-After, RateLimit-*)."""

    status, slug, title = 429, "rate-limited", "Too many requests"


class ServiceUnavailable(AppError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=body["status"], headers=headers, media_type=PROBLEM_JSON)


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem_response(exc.to_problem(), exc.headers)


# Errors Starlette raises itself (no route, wrong method, body too large) get the same type
# and title as the AppError of that status.
_HTTP_KINDS: dict[int, type[AppError]] = {
    kind.status: kind for kind in (NotFound, MethodNotAllowed, PayloadTooLarge)
}


def _http_problem(status: int, detail: str) -> dict[str, Any]:
    kind = _HTTP_KINDS.get(status)
    if kind is not None:
        kind_type, title = PROBLEM_BASE + str(kind.slug), kind.title
    else:
        try:
            kind_type, title = "about:blank", HTTPStatus(status).phrase
        except ValueError:
            kind_type, title = "about:blank", "HTTP error"
    return {"type": kind_type, "title": title, "status": status, "detail": detail}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = _http_problem(exc.status_code, str(exc.detail))
    return problem_response(body, dict(exc.headers) if exc.headers else None)


def _jsonable_error(error: Any) -> dict[str, Any]:
    item = {"loc": list(error.get("loc", ())), "msg": error.get("msg"), "type": error.get("type")}
    return item


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_jsonable_error(e) for e in exc.errors()]
    first = errors[0] if errors else None
    if first is None:
        detail = "Invalid request"
    elif first.get("type") == "json_invalid":
        # loc is ("body", <character offset>): say what a client can act on
        detail = f"The body is not valid JSON (near character {first['loc'][-1]})."
    elif first.get("type") == "model_attributes_type" and tuple(first["loc"]) == ("body",):
        detail = "The body must be a JSON object, sent as Content-Type: application/json."
    else:
        detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    body = {
        "type": PROBLEM_BASE + "validation",
        "title": "Invalid request",
        "status": 422,
        "detail": detail,
        "errors": errors,
    }
    return problem_response(body)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    # Starlette calls this outside the request-id middleware (whose context is gone by
    # now), so the id comes from the scope, for the log line and the response header.
    request_id = request.scope.get(REQUEST_ID_SCOPE_KEY)
    log.exception(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        extra={"request_id": request_id} if request_id else None,
    )
    body = {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "Something went wrong on our side; it was logged.",
    }
    return problem_response(body, {"X-Request-ID": request_id} if request_id else None)


class BodyLimitMiddleware:
    """Refuse request bodies over `max_body_bytes` (or a route's own limit) with a 413 problem.

    FastAPI's `max_body_size` answers a too-large declared Content-Length with a text/plain
    413 sent from outside every user middleware (no problem+json, no request id), so the
    limit lives here. It is applied when the app first reads the body, after routing, so
    `route_limits` (route path template → bytes) can raise it for a route such as uploads;
    a body without a Content-Length (chunked) is counted as it is read.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, route_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.route_limits = dict(route_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("content-length")
        declared = int(header) if header is not None and header.isdigit() else None
        limit: int | None = None
        received = 0

        async def limited_receive() -> Message:
            nonlocal limit, received
            if limit is None:
                template = getattr(scope.get("route"), "path", None)
                limit = self.route_limits.get(template or "", self.max_body_bytes)
            if declared is not None and declared > limit:
                raise _body_too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _body_too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


def _body_too_large(limit: int) -> StarletteHTTPException:
    # An HTTPException, so FastAPI's body parsing lets it through to _http_error.
    detail = f"The request body is larger than the limit of {limit} bytes."
    return StarletteHTTPException(413, detail)


async def _unstorable_text(_: Request, exc: Exception) -> JSONResponse:
    # Text PostgreSQL refuses (a NUL character, \u0000 in jsonb) that got past validation,
    # e.g. in a token claim: the request's fault, not a server error.
    log.warning("refused unstorable text: %s", exc)
    detail = "The request holds text that cannot be stored (such as a NUL character)."
    return problem_response(BadRequest(detail).to_problem())


# Raised by the database (migration 20261130002000) when a write names an erased user: a
# request that authenticated just before its account was erased.
ERASED_OWNER_CONSTRAINT = "users_erased_owner"


async def _foreign_key(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, asyncpg.ForeignKeyViolationError)
    if getattr(exc, "constraint_name", None) == ERASED_OWNER_CONSTRAINT:
        refused = Unauthorized("This account was deleted.")
        return problem_response(refused.to_problem(), refused.headers)
    return await _unhandled(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(asyncpg.ForeignKeyViolationError, _foreign_key)
    for unstorable in (
        asyncpg.CharacterNotInRepertoireError,
        asyncpg.UntranslatableCharacterError,
    ):
        app.add_exception_handler(unstorable, _unstorable_text)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORSMiddleware, with a refused preflight answered in problem+json too."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        detail = bytes(response.body).decode() + "."  # "Disallowed CORS origin, headers"
        return problem_response(BadRequest(detail).to_problem(), headers)


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
        415: "Unsupported media type",
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


def header_docs(**headers: str) -> dict[str, dict[str, Any]]:
    """OpenAPI `headers` of a response: {name: description}, each a string."""
    return {
        name.replace("_", "-"): {"description": text, "schema": {"type": "string"}}
        for name, text in headers.items()
    }
