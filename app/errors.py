"""One error hierarchy, rendered as RFC 9457 problem+json by one set of handlers.

The middlewares that answer in problem+json are in `app.middleware`; the OpenAPI document is
rewritten to say problem+json in `app.openapi`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.core import messages
from app.headers import security_headers
from app.observability import REQUEST_ID_SCOPE_KEY, carried_headers

log = logging.getLogger("atelier.errors")

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
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


# Every problem `type` the service answers, by HTTP status: the OpenAPI document gives each
# documented error status these as an enum (`app.openapi`), and the README lists them.
ABOUT_BLANK = "about:blank"
PROBLEM_TYPES: dict[int, tuple[str, ...]] = {
    400: (PROBLEM_BASE + "bad-request", PROBLEM_BASE + "repeated-header"),
    401: (PROBLEM_BASE + "unauthorized",),
    402: (PROBLEM_BASE + "insufficient-credits",),
    403: (PROBLEM_BASE + "forbidden",),
    404: (PROBLEM_BASE + "not-found",),
    405: (PROBLEM_BASE + "method-not-allowed",),
    409: (PROBLEM_BASE + "conflict",),
    413: (PROBLEM_BASE + "payload-too-large",),
    415: (PROBLEM_BASE + "unsupported-media-type",),
    422: (PROBLEM_BASE + "validation", PROBLEM_BASE + "unprocessable"),
    429: (PROBLEM_BASE + "rate-limited",),
    431: (PROBLEM_BASE + "headers-too-large",),
    # about:blank: an unexpected error (logged; nothing about it is exposed)
    500: (ABOUT_BLANK, PROBLEM_BASE + "webhook-failed"),
    503: (PROBLEM_BASE + "service-unavailable",),
}


# What an unexpected error answers (nothing about it is exposed; it is logged).
UNHANDLED_PROBLEM: dict[str, Any] = {
    "type": ABOUT_BLANK,
    "title": "Internal Server Error",
    "status": 500,
    "detail": "Something went wrong on our side; it was logged.",
}


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


class RepeatedHeader(BadRequest):
    """A header that must appear once came several times: no copy is picked silently."""

    slug, title = "repeated-header", "Repeated header"

    def __init__(self, header: str) -> None:
        super().__init__(f"Send one {header} header; this request has several.", header=header)


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


class UnsupportedMediaType(AppError):
    """A body in a media type the operation does not take; `accepted` lists those it does,
    and so does the `Accept` header when the request's own Content-Type was wrong (RFC 9110
    §15.5.16), not an upload's image format."""

    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"

    def __init__(self, detail: str, accepted: Sequence[str], *, request_type: bool) -> None:
        headers = {"Accept": ", ".join(accepted)} if request_type else None
        super().__init__(detail, headers=headers, accepted=list(accepted))

    @classmethod
    def body(cls, content_type: str | None, accepted: list[str]) -> UnsupportedMediaType:
        """A body sent as `content_type` (None: with none) where only `accepted` are read."""
        sent = "no Content-Type"
        if content_type:  # as sent, cut short: it is the client's text
            shown = content_type if len(content_type) <= 100 else f"{content_type[:100]}…"
            sent = f"Content-Type: {shown}"
        takes = " or ".join(accepted)
        message = f"The body must be sent as Content-Type: {takes}; this request has {sent}."
        return cls(message, accepted, request_type=True)


class HeadersTooLarge(AppError):
    status, slug, title = 431, "headers-too-large", "Request headers too large"

    @classmethod
    def over(cls, limit: int) -> HeadersTooLarge:
        return cls(f"The request's headers are larger than the limit of {limit} bytes.")


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


class BodyTooLarge(StarletteHTTPException):
    """A body over its limit, found while FastAPI reads it: an HTTPException, which its body
    parsing lets through (an AppError would become a 400), rendered with the `limit`."""

    def __init__(self, detail: str, limit: int) -> None:
        super().__init__(413, detail)
        self.limit = limit


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    carried = carried_headers.get()
    if carried:  # e.g. a 402 after the request was counted: the caller's RateLimit-* too
        headers = {**carried, **(headers or {})}
    return JSONResponse(body, status_code=body["status"], headers=headers, media_type=PROBLEM_JSON)


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem_response(exc.to_problem(), exc.headers)


# Errors Starlette and FastAPI raise themselves (no route, wrong method, body too large, a body
# that cannot be parsed) get the same type and title as the AppError of that status.
_HTTP_KINDS: dict[int, type[AppError]] = {
    kind.status: kind for kind in (BadRequest, NotFound, MethodNotAllowed, PayloadTooLarge)
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


def allowed_methods(request: Request) -> str:
    """`Allow` for a path: the methods of every route that matches it, HEAD beside GET.

    Starlette's 405 names only the methods of the first route that matched the path, so a
    path served by a GET route and a DELETE route said `Allow: GET`."""
    path = request.scope["path"]
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        if route.methods and route.path and compile_path(route.path)[0].match(path):
            methods |= set(route.methods)
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = str(exc.detail)
    if exc.status_code == 400:
        detail = messages.unparsable_body(exc.__cause__) or detail
    body = _http_problem(exc.status_code, detail)
    if isinstance(exc, BodyTooLarge):
        body["limit"] = exc.limit
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        body["detail"] = f"{request.method} is not allowed here."
        headers["Allow"] = allowed_methods(request)
    elif exc.status_code == 404 and detail == "Not Found":  # no route matched
        body["detail"] = "There is nothing at this path; see /openapi.json."
    return problem_response(body, headers or None)


def _jsonable_error(error: Any) -> dict[str, Any]:
    # `msg` in the sender's terms (characters of text, not "items"); `type` stays pydantic's.
    message = messages.validation_message(error)
    # A union member's tag is no place in the request (messages.TAG_PREFIX).
    loc = [
        part
        for part in error.get("loc", ())
        if not (isinstance(part, str) and part.startswith(messages.TAG_PREFIX))
    ]
    return {"loc": loc, "msg": message, "type": error.get("type")}


# deps.JsonBodyRoute keeps here why a JSON body did not parse (and hands the model its bytes).
UNPARSED_BODY_SCOPE_KEY = "atelier.unparsed_body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if any(_unread_body(error) for error in exc.errors()):
        unparsed = request.scope.get(UNPARSED_BODY_SCOPE_KEY)
        if isinstance(unparsed, json.JSONDecodeError):
            return problem_response(validation_problem([messages.json_invalid(unparsed)]))
        if isinstance(unparsed, BaseException):
            detail = messages.unparsable_body(unparsed) or "The body could not be parsed."
            return problem_response(_http_problem(400, detail))
        takes = messages.json_body_types(request.method)
        refused = UnsupportedMediaType.body(request.headers.get("content-type"), takes)
        headers = dict(refused.headers or {})
        if request.method == "PATCH":  # RFC 5789 §2.2
            headers["Accept-Patch"] = ", ".join(takes)
        return problem_response(refused.to_problem(), headers)
    return problem_response(validation_problem(exc.errors()))


def _unread_body(error: Mapping[str, Any]) -> bool:
    """Whether FastAPI left a JSON body unparsed: it hands the model the bytes when the
    Content-Type is missing or not JSON (application/json, */*+json); parsed JSON is not."""
    return tuple(error.get("loc", ())) == ("body",) and isinstance(error.get("input"), bytes)


def validation_problem(raised: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `validation` problem of the errors pydantic (or a route) raised for a request."""
    errors = [_jsonable_error(e) for e in raised]
    first = errors[0] if errors else None
    if first is None:
        detail = "Invalid request"
    elif first.get("type") == "json_invalid":
        # loc is ("body", <character offset>): say what a client can act on
        detail = f"The body is not valid JSON (near character {first['loc'][-1]})."
    elif first.get("type") == "model_attributes_type" and tuple(first["loc"]) == ("body",):
        detail = "The body must be a JSON object."
    else:
        detail = f"{messages.field_name(first['loc'])}: {first['msg']}"
    return {
        "type": PROBLEM_BASE + "validation",
        "title": "Invalid request",
        "status": 422,
        "detail": detail,
        "errors": errors,
    }


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
    body = dict(UNHANDLED_PROBLEM)
    headers = {"X-Request-ID": request_id} if request_id else {}
    # Sent from outside every middleware, so the security headers are added here.
    production = request.app.state.settings.env == "production"
    for name, value in security_headers(request.url.path, hsts=production):
        headers[name.decode()] = value.decode()
    return problem_response(body, headers)


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
    for unstorable in (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError):
        app.add_exception_handler(unstorable, _unstorable_text)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
