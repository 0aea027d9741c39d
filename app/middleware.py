"""The app's own ASGI middlewares that answer in problem+json: the body limit and CORS.

Wired by `app.main.create_app` (with `app.headers` and `app.observability`'s middlewares).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.messages import byte_size
from app.errors import BadRequest, BodyTooLarge, problem_response
from app.headers import first_header


@dataclass(frozen=True)
class RouteLimit:
    """A route's own body limit: `read` bytes may arrive (the `stated` limit plus framing,
    such as multipart's), and a 413 names `stated`, the setting the sender can act on, in
    the words `what` ("Uploads"), and the `setting` it is ("MAX_UPLOAD_BYTES")."""

    read: int
    stated: int
    what: str
    setting: str


class BodyLimitMiddleware:
    """Refuse request bodies over `max_body_bytes` (or a route's own limit) with a 413 problem
    that names the limit (in `detail`, and as `limit` in bytes).

    FastAPI's `max_body_size` answers a too-large declared Content-Length with a text/plain
    413 sent from outside every user middleware (no problem+json, no request id), so the
    limit lives here. It is applied when the app first reads the body, after routing, so
    `route_limits` (route path template → its limit) can raise it for a route such as
    uploads; a body without a Content-Length (chunked) is counted as it is read.

    An answer sent before the body was all read (a 401 or 429 to an upload, which reads its
    body last; a 413) says `Connection: close`, and uvicorn closes once it is sent, unless
    uvicorn may read and discard the rest: a declared length within the route's limit, from
    a client already sending it. That client must be left to finish (closing under it
    resets the connection and loses the answer: Node's fetch saw EPIPE instead of the
    401), and what it sends is bounded. Closed are: a 413 (uvicorn would otherwise read a
    body of any size to its end), a declared length over the limit, a chunked body (no
    bound), and a client that sent `Expect: 100-continue` and was never asked for its body
    (it holds the body back, and must not reuse the connection: its next request would be
    taken for the rest of this body).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        route_limits: Mapping[str, RouteLimit] | None = None,
    ) -> None:
        self.app = app
        self.default = self.default_limit(max_body_bytes)
        self.route_limits = dict(route_limits or {})

    @staticmethod
    def default_limit(max_body_bytes: int) -> RouteLimit:
        return RouteLimit(max_body_bytes, max_body_bytes, "The request body", "MAX_BODY_BYTES")

    def _limit(self, scope: Scope) -> RouteLimit:
        template = getattr(scope.get("route"), "path", None)
        return self.route_limits.get(template or "", self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = first_header(scope, b"content-length")
        declared = int(header) if header is not None and header.isdigit() else None
        chunked = first_header(scope, b"transfer-encoding") is not None
        limit: RouteLimit | None = None
        received = 0
        asked = False  # the app asked for the body (uvicorn then sends `100 Continue`)
        whole = False  # its last piece has arrived
        refused = False  # a 413 was raised

        async def limited_receive() -> Message:
            nonlocal limit, received, asked, whole, refused
            if limit is None:
                limit = self._limit(scope)
            if declared is not None and declared > limit.read:
                refused = True
                raise body_too_large(limit)
            asked = True
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.read:
                    refused = True
                    raise body_too_large(limit)
                whole = not message.get("more_body", False)
            return message

        if not declared and not chunked:
            await self.app(scope, limited_receive, send)  # no body: nothing left unread
            return
        expect = first_header(scope, b"expect")
        waiting = expect is not None and expect.lower() == b"100-continue"

        def drained() -> bool:
            """Whether uvicorn may read and discard what the app left unread: only a declared
            length within the route's limit, from a client that is sending it."""
            if refused or declared is None or (waiting and not asked):
                return False
            return declared <= (limit or self._limit(scope)).read

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and not whole and not drained():
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, limited_receive, send_closing)


def upload_limit(max_upload_bytes: int) -> RouteLimit:
    """POST /v1/uploads's own limit: MAX_UPLOAD_BYTES of image, plus the multipart framing."""
    return RouteLimit(max_upload_bytes + 64 * 1024, max_upload_bytes, "Uploads", "MAX_UPLOAD_BYTES")


def body_too_large(limit: RouteLimit) -> BodyTooLarge:
    # An HTTPException, so FastAPI's body parsing lets it through to errors._http_error.
    stated = f"{byte_size(limit.stated)}, {limit.setting}"
    return BodyTooLarge(f"{limit.what} may be at most {stated}.", limit.stated)


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORSMiddleware, with a refused preflight answered in problem+json too, and
    a request that names no Origin (no browser asked across origins: the apps and
    integrators) passed through with only `Vary: Origin` added, as a raw header: Starlette
    rebuilds the answer's headers to merge it into one `Vary`, ~10 µs a request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and first_header(scope, b"origin") is None:

            async def send_varying(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = [*message.get("headers", ()), (b"vary", b"Origin")]
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_varying)
            return
        await super().__call__(scope, receive, send)

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


class HeadMiddleware:
    """Answer HEAD wherever GET is served: the GET route runs, its headers are sent, its body
    is not (RFC 9110 §9.3.2).

    FastAPI routes list only the methods they declare, so HEAD was a 405; adding HEAD to every
    route would add a second operation per path to the OpenAPI document. The first body
    message ends the response, so a stream (SSE, a pack export) stops there: the server then
    reports the client gone, which ends the stream's generator.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = False

        async def send_head(message: Message) -> None:
            nonlocal ended
            if ended:
                return
            if message["type"] == "http.response.body":
                ended = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_head)
