"""The FastAPI application: create_app() and the lifespan that opens and closes what it uses."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
import httpx
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from app import errors, middleware, openapi
from app.config import Settings
from app.db import pool as db_pool
from app.deps import Services
from app.headers import DOCS_STATIC_URL, SecurityHeaders
from app.observability import Metrics, RequestContextMiddleware, serve_metrics
from app.routers import (
    admin,
    api_keys,
    billing,
    files,
    generations,
    health,
    images,
    me,
    packs,
    prompts,
    webhook_endpoints,
    webhooks,
)
from app.services import auth, devauth, imaging, outgoing, rate_limits
from app.services import billing as billing_service
from app.services.api_keys import ApiKeys
from app.services.billing import StripeApi
from app.services.cache_notices import forget_on_notice
from app.services.clerk_events import ClerkEvents
from app.services.providers.base import ImageProvider
from app.services.providers.factory import build_provider
from app.services.realtime import ALL_CHANNELS, Hub
from app.services.storage.base import SignedStorage, Storage
from app.services.storage.factory import build_storage
from app.services.storage.local import LocalStorage
from app.services.stripe_events import StripeEvents
from app.services.users import ClerkDirectory, Users
from app.services.webhooks import Handler
from app.services.worker import Worker

log = logging.getLogger("atelier.main")

API_DESCRIPTION = """\
Atelier's JSON API. Authenticate with `Authorization: Bearer <Clerk session token>`, or
from a server with an API key (`Authorization: Bearer atl_…`, see `/v1/api-keys`).
Every error is `application/problem+json` (RFC 9457).
"""


def _operation_id(route: APIRoute) -> str:
    return route.name


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Loading the CA bundle costs ~50 ms: do it once per process, not per client."""
    return ssl.create_default_context()


@dataclass
class Runtime:
    """What both the API and a worker process need, opened once per process."""

    pool: asyncpg.Pool
    storage: Storage
    provider: ImageProvider
    hub: Hub
    decoders: imaging.Decoders


async def open_runtime(
    stack: AsyncExitStack,
    settings: Settings,
    metrics: Metrics | None = None,
    channels: tuple[str, ...] = ALL_CHANNELS,
) -> Runtime:
    """Open the pool, storage, the provider and the realtime hub; `stack` closes them.
    `metrics`: where the provider reports latency, errors and fallbacks (the API's /metrics);
    `channels`: what the hub listens to (a process running only a worker: WORKER_CHANNELS)."""
    url = await asyncio.to_thread(db_pool.database_url, settings)
    listen_url = await asyncio.to_thread(db_pool.database_url, settings, direct=True)
    pool = await db_pool.create_pool(settings, url)
    stack.push_async_callback(pool.close)
    storage = await asyncio.to_thread(build_storage, settings)
    stack.push_async_callback(storage.aclose)
    provider = build_provider(settings, metrics)
    stack.push_async_callback(provider.aclose)
    hub = Hub(lambda: db_pool.connect(settings, listen_url), channels)
    await hub.start()
    stack.push_async_callback(hub.stop)
    decoders = imaging.Decoders(settings.imaging_workers)
    stack.callback(decoders.close)
    _freeze_startup_heap()
    return Runtime(pool, storage, provider, hub, decoders)


def _freeze_startup_heap() -> None:
    """Keep what start-up built (modules, classes, functions, models: ~170k objects) out of
    the garbage collector's full passes. It lives as long as the process anyway, and each
    full pass walked all of it: 50-500 ms with the event loop stopped, the worst stalls of
    bench/inflight_memory. Collected once first, so no garbage is frozen with it."""
    gc.collect()
    gc.freeze()


async def open_stripe(stack: AsyncExitStack, settings: Settings) -> StripeApi | None:
    """Stripe's client (None without STRIPE_SECRET_KEY); `stack` closes it."""
    api = await asyncio.to_thread(billing_service.build_stripe, settings)
    if api is not None:
        stack.push_async_callback(api.aclose)
    return api


def webhook_handlers(
    settings: Settings,
    stripe_api: StripeApi | None,
    pool: asyncpg.Pool,
    storage: Storage,
    users: Users,
    directory: ClerkDirectory,
) -> dict[str, Handler]:
    """Each provider's webhook handler, by the name its events are stored under. `users` is
    the process's own (an erasure makes it forget the user at once)."""
    return {
        "stripe": StripeEvents(settings, stripe_api),
        "clerk": ClerkEvents(pool, storage, users, directory, stripe_api),
    }


async def run_worker(runtime: Runtime, settings: Settings, stop: asyncio.Event) -> None:
    worker = Worker(
        settings,
        runtime.pool,
        runtime.provider,
        runtime.storage,
        runtime.hub,
        decoders=runtime.decoders,
    )
    # Outgoing webhooks are sent by the worker process too, never by a request.
    sender = outgoing.Sender(settings, runtime.pool, runtime.storage)
    await asyncio.gather(worker.run(stop), sender.run(stop))


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _report_worker_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the in-process worker stopped", exc_info=task.exception())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open what the API uses and (unless WORKER_IN_PROCESS=false) a worker; close in reverse."""
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        runtime = await open_runtime(stack, settings, app.state.metrics)
        if settings.metrics_port is not None:
            stop_metrics = await asyncio.to_thread(
                serve_metrics,
                app.state.metrics.registry,
                settings.metrics_host,
                settings.metrics_port,
            )
            stack.push_async_callback(asyncio.to_thread, stop_metrics)
        http = httpx.AsyncClient(timeout=settings.outbound_timeout_seconds, verify=_tls_context())
        stack.push_async_callback(http.aclose)
        dev_public = jwks = None
        if settings.auth == "dev":
            key = await asyncio.to_thread(devauth.load_or_create_key, settings.dev_key_path)
            log.info(
                "AUTH=dev: tokens are signed with the key in %s; `atelier dev-token` mints "
                "them when run with this DATA_DIR",
                settings.dev_key_path.parent.absolute(),
            )
            dev_public, jwks = devauth.public_pem(key), devauth.jwks(key)
        limiter = rate_limits.build_limiter(settings)
        stack.push_async_callback(limiter.aclose)
        await limiter.check_storage()
        stripe_api = await open_stripe(stack, settings)
        storage = runtime.storage
        # The store whose signed links the files route serves: local storage only.
        signed: SignedStorage | None = storage if isinstance(storage, LocalStorage) else None
        app.state.local_storage = signed
        verifier = auth.build_verifier(settings, http, dev_public)
        stack.callback(verifier.close)
        directory = ClerkDirectory(settings, http)
        users = Users(settings, directory)
        app.state.services = Services(
            settings=settings,
            pool=runtime.pool,
            http=http,
            verifier=verifier,
            users=users,
            metrics=app.state.metrics,
            storage=storage,
            provider=runtime.provider,
            hub=runtime.hub,
            limiter=limiter,
            decoders=runtime.decoders,
            jwks=jwks,
            stripe=stripe_api,
            webhook_handlers=webhook_handlers(
                settings, stripe_api, runtime.pool, storage, users, directory
            ),
            api_keys=ApiKeys(settings.api_key_cache_seconds),
        )
        forgetting = asyncio.create_task(
            forget_on_notice(runtime.hub, users, app.state.services.api_keys), name="forget"
        )
        stack.push_async_callback(_cancelled, forgetting)
        if settings.worker_in_process:
            stop = asyncio.Event()
            task = asyncio.create_task(run_worker(runtime, settings, stop), name="worker")
            task.add_done_callback(_report_worker_exit)

            async def stop_worker() -> None:
                stop.set()
                # a worker that died was logged by _report_worker_exit; shut down regardless
                await asyncio.gather(task, return_exceptions=True)

            stack.push_async_callback(stop_worker)
        yield


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, added to the app as they are. FastAPI 0.165's include_router
    keeps an included router as one route that matches each request through a per-request
    context of its routes: about 60 µs of a `/v1/me` and 200 µs of a gallery page's CPU
    (bench/app_cpu.py). A route's path, tags, responses (openapi.ANY_OPERATION included) and
    dependencies already hold its router's. Rebuilding each route for each app instead
    (app.router.add_api_route) costs 140 ms an app, minutes over the test suite.

    The route objects are shared by every app built in the process, so an app's
    `dependency_overrides` do not reach them: nothing here uses overrides (tests build apps
    from settings and loopback stand-ins)."""
    for route in router.routes:
        listed = getattr(route, "responses", {})
        if any(status not in listed for status in openapi.ANY_OPERATION):
            # the app's responses= does not reach a route added this way
            raise RuntimeError(f"{route!r}: its router must list openapi.ANY_OPERATION")
    app.router.routes.extend(router.routes)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the installed package
    # (under DOCS_STATIC_URL), not from a CDN, so they work offline and under a 'self' CSP.
    app = FastAPIOffline(
        static_url=DOCS_STATIC_URL,
        title="Atelier API",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        # For routes added to the app itself; the routers list them too (_add_routes).
        responses=openapi.responses(*openapi.ANY_OPERATION),
        # FastAPI's native OpenTelemetry asks for the global providers on every request (about
        # 8 µs each, a tenth of a bare handler's cost: bench/reads.py); no OpenTelemetry SDK is
        # installed to provide one, and metrics are Prometheus (app.observability).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # `/v1/me/` is a 404 problem, not Starlette's 307 to `/v1/me`: that redirect is an
        # absolute URL built from the request, plain http behind a TLS proxy that uvicorn
        # does not trust, where a client following it would send its token unencrypted.
        redirect_slashes=False,
    )
    # The body limit is middleware.BodyLimitMiddleware, not FastAPI(max_body_size=...): FastAPI's
    # answers a declared oversize body with text/plain from outside every middleware.
    app.state.settings = settings
    app.state.metrics = Metrics()
    errors.install(app)
    for router in (
        health.router,
        me.router,
        generations.router,
        images.router,
        prompts.router,
        packs.router,
        files.router,
        admin.router,
        billing.router,
        webhooks.router,
        api_keys.router,
        webhook_endpoints.router,
    ):
        _add_routes(app, router)
    app.webhooks.include_router(webhook_endpoints.events)  # documented, not served
    openapi.install(app)
    # add_middleware wraps what is there: the last one added runs first.
    app.add_middleware(
        middleware.BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        route_limits={"/v1/uploads": middleware.upload_limit(settings.max_upload_bytes)},
    )
    if settings.allowed_origins:
        app.add_middleware(
            middleware.ProblemCORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",  # a browser reconnecting to a stream resends it
                "Prefer",
                "X-Request-ID",
            ],
            expose_headers=[
                "Location",
                "X-Request-ID",
                "Retry-After",
                "Idempotent-Replayed",
                "Preference-Applied",
                "Content-Disposition",  # a pack export's file name, for the web app
                *rate_limits.HEADER_NAMES,
            ],
            max_age=600,
        )
    # Outside CORS, so a HEAD from another origin gets the GET's CORS headers too.
    app.add_middleware(middleware.HeadMiddleware)
    # Outermost, so every answer (CORS preflights, 413s, streams, files) carries the request
    # id and the security headers.
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app.state.metrics,
        headers=SecurityHeaders(hsts=settings.env == "production"),
    )
    return app
