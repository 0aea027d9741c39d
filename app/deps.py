"""Dependencies the routers share: the app's services, a pooled connection, the caller; and
the route class of the routers with PATCH operations.

It sits with the routers (the web layer of tests/unit/test_layering.py): it may name services
and the storage and provider interfaces, never app.db or an implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
import httpx
from fastapi import Depends, Request, Response
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param

from app.config import Settings
from app.errors import UNPARSED_BODY_SCOPE_KEY, Forbidden, RepeatedHeader, Unauthorized
from app.observability import Metrics, after_response
from app.services import api_keys
from app.services.api_keys import ApiKeys
from app.services.auth import Identity, TokenVerifier
from app.services.billing import StripeApi
from app.services.imaging import Decoders
from app.services.providers.base import ImageProvider
from app.services.rate_limits import RateLimiter, Scope
from app.services.realtime import Hub
from app.services.storage.base import Storage
from app.services.users import User, Users
from app.services.webhooks import Handler


@dataclass
class Services:
    """What the lifespan opened, in one place (app.state.services)."""

    settings: Settings
    pool: asyncpg.Pool
    http: httpx.AsyncClient
    verifier: TokenVerifier
    users: Users
    metrics: Metrics
    storage: Storage
    provider: ImageProvider
    hub: Hub
    limiter: RateLimiter
    decoders: Decoders
    jwks: dict[str, object] | None = None
    stripe: StripeApi | None = None  # None without STRIPE_SECRET_KEY: billing answers 503
    webhook_handlers: dict[str, Handler] = field(default_factory=dict)
    api_keys: ApiKeys = field(default_factory=ApiKeys)
    # Requests queue for a pooled connection here, first come first served (asyncio's
    # Semaphore is fair; the pool's own queue lets a newcomer take a connection released
    # for a waiter, which then goes to the back). At 32 connections on the default pool of
    # 20, p99 of /v1/me fell from 1.0-1.4 s to 0.35-0.43 s (wrk, load average 7: bench/reads).
    db_slots: asyncio.Semaphore | None = None
    # The users whose feed streams this process holds (a stream each): an `image` event
    # says `liked_by_me` to those who like it (app.services.gallery.announced).
    feed_viewers: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.db_slots is None:
            self.db_slots = asyncio.Semaphore(self.pool.get_max_size())

    @contextlib.asynccontextmanager
    async def feed_viewer(self, user_id: str) -> AsyncIterator[None]:
        """`user_id` counted in `feed_viewers` while one of their streams is open."""
        self.feed_viewers[user_id] += 1
        try:
            yield
        finally:
            self.feed_viewers[user_id] -= 1
            if not self.feed_viewers[user_id]:
                del self.feed_viewers[user_id]


def services_of(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def services(request: Request) -> Services:
    """As a dependency: async, so FastAPI does not send it to the thread pool per request."""
    return services_of(request)


async def connection(request: Request) -> asyncpg.Connection:
    """A pooled connection, given back once the answer is sent, as a generator dependency's
    would be, without its cost (`observability.after_response`). Requests take their turn
    for one at `db_slots`."""
    svc = services_of(request)
    assert svc.db_slots is not None
    await svc.db_slots.acquire()
    conn: asyncpg.Connection | None = None
    try:
        conn = await svc.pool.acquire()
        after_response(request.scope, functools.partial(_give_back, svc, conn))
    except BaseException:
        await _give_back(svc, conn)
        raise
    return conn


async def _give_back(svc: Services, conn: asyncpg.Connection | None) -> None:
    assert svc.db_slots is not None
    try:
        if conn is not None:
            await svc.pool.release(conn)  # asyncpg shields it: a cancellation cannot leak it
    finally:
        svc.db_slots.release()


async def _verify(svc: Services, token: str) -> Identity:
    # An API key is recognised by its prefix and never parsed as a JWT.
    if api_keys.is_api_key(token):
        return await svc.api_keys.verify(svc.pool, token)
    return await svc.verifier.verify(token)


def sent_once(request: Request, name: str) -> str | None:
    """The header `name` as sent, None when it was not; sent several times, a 400 (which
    copy would a proxy or a cache have acted on?). FastAPI's `Header` takes the first copy
    silently: a route whose header must not be ambiguous (an Idempotency-Key a proxy doubled
    would replay one key's job and charge again for the other) checks here as well."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise RepeatedHeader(name)
    return values[0] if values else None


def bearer_token(request: Request) -> str | None:
    """The bearer token sent, if any, read as HTTPBearer reads it; several Authorization
    headers are a 400."""
    scheme, token = get_authorization_scheme_param(sent_once(request, "Authorization"))
    return token if token and scheme.lower() == "bearer" else None


class _Bearer(SecurityBase):
    """A dependency that is also the OpenAPI security scheme `HTTPBearer` the operations
    list, and reads the bearer token itself: FastAPI's HTTPBearer and a function checking
    what it read were two dependencies, and FastAPI spends 10-25 µs a request solving each
    (bench/app_cpu.py). Every authenticated request resolves one of these."""

    def __init__(self, *, required: bool) -> None:
        self.model = HTTPBearerModel(
            description="A Clerk session token (or a dev token), or an API key (atl_…)."
        )
        self.scheme_name = "HTTPBearer"
        self.required = required

    async def identity(self, request: Request) -> Identity | None:
        """The verified token; without one, a 401 or None when not `required`. Verified
        once per request, however many of these dependencies a route has."""
        token = bearer_token(request)
        if token is None:
            if self.required:
                raise Unauthorized(
                    "Send 'Authorization: Bearer <session token or API key>'.", sent=False
                )
            return None
        memo: tuple[str, Identity] | None = request.scope.get(_VERIFIED)
        if memo is not None and memo[0] == token:
            return memo[1]
        verified = await _verify(services_of(request), token)
        request.scope[_VERIFIED] = (token, verified)
        return verified


_VERIFIED = "atelier.identity"  # (token, its Identity) once verified, in the ASGI scope


class BearerIdentity(_Bearer):
    """The caller's verified token (an Identity): no database work yet."""

    async def __call__(self, request: Request) -> Identity | None:
        return await self.identity(request)


class BearerUser(_Bearer):
    """The caller (a User). The token is verified first, so a bad one, or one waiting for
    the JWKS, holds no pooled connection; the user is read on a connection of its own,
    released before a new user's Clerk lookup and before the route's `Conn` is taken
    (routes name `CurrentUser` before `Conn`)."""

    async def __call__(self, request: Request) -> User | None:
        who = await self.identity(request)
        if who is None:
            return None
        svc = services_of(request)
        return await svc.users.authenticate(svc.pool, who)


# The dependencies every authenticated request resolves are kept few and flat: /v1/me is
# measured against a bare handler (bench/reads.py). The token and the user as one node
# (BearerUser), not a chain of two: /v1/me's CPU in process 438-504 -> 387-440 µs
# (bench/README.md, "2026-11-30, late").
identity = BearerIdentity(required=True)
current_user = BearerUser(required=True)
optional_user = BearerUser(required=False)


Conn = Annotated[asyncpg.Connection, Depends(connection)]
# The verified token only (no database work yet), for routes that manage their connections.
Caller = Annotated[Identity, Depends(identity)]
Svc = Annotated[Services, Depends(services)]


async def session_only(who: Caller) -> None:
    """Refuses API keys (403): a route that manages keys or money needs a person signed in."""
    if who.api_key_id is not None:
        raise Forbidden("API keys cannot be used here: sign in.")


def rate_limited(scope: Scope) -> Callable[..., Awaitable[None]]:
    """A dependency counting the request against the caller's `scope` budget (429 when spent),
    before any database work; the answer carries the caller's RateLimit-* headers."""

    async def check(who: Caller, svc: Svc, response: Response) -> None:
        quota = await svc.limiter.hit(scope, who.sub)
        if quota is not None:
            response.headers.update(quota.headers())

    return check


CurrentUser = Annotated[User, Depends(current_user)]


# For long-lived responses: `current_user` already gives its connection back at once.
StreamUser = CurrentUser


OptionalUser = Annotated[User | None, Depends(optional_user)]


async def admin_user(svc: Svc, user: CurrentUser) -> User:
    if user.id not in svc.settings.admin_user_ids:
        raise Forbidden("This needs an administrator.")
    return user


AdminUser = Annotated[User, Depends(admin_user)]


# A JSON Patch (RFC 6902): a list of operations, not the fields to change.
JSON_PATCH = "application/json-patch+json"


class _JsonBody(Request):
    """The request as `JsonBodyRoute` hands it to FastAPI: its JSON parsed; or its bytes, as
    FastAPI leaves a body in a media type it does not read as JSON, which the model refuses
    after the dependencies. `errors._validation_error` answers that refusal with what the
    parse said (kept in the scope), or, for a PATCH's JSON Patch, with its 415."""

    async def json(self) -> Any:
        body = await self.body()  # reading it may fail (too large, a disconnect): as before
        media_type = self.headers.get("content-type", "").partition(";")[0].strip().lower()
        if self.method == "PATCH" and media_type == JSON_PATCH:
            return body
        try:
            return await super().json()
        except (ValueError, RecursionError) as exc:  # bad syntax, bytes not text, too deep
            self.scope[UNPARSED_BODY_SCOPE_KEY] = exc
            return body


class JsonBodyRoute(APIRoute):
    """The route class of every router with JSON bodies. FastAPI parses a JSON body before it
    solves the route's dependencies, and answered a body that is not JSON (a 422, or a 400 for
    one nested too deeply) before the token's 401 or an API key's 403: a caller with no
    right to the operation got feedback on its body first. Here a body that cannot be parsed
    is refused when the model validates it, after the dependencies, with the same problem.

    A PATCH takes the fields to change as a JSON object (`application/json`, or
    `application/merge-patch+json`, which means the same). FastAPI reads any
    `application/…+json` as JSON, a JSON Patch too: its list was refused as no object (a
    422) and an object sent under its name was applied. A JSON Patch is left unread instead,
    so it gets the 415 (and `Accept-Patch`) of any media type the operation does not take."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler  # nothing to parse (a GET): as FastAPI serves it

        async def with_json_body(request: Request) -> Response:
            return await handler(_JsonBody(request.scope, request.receive))

        return with_json_body
