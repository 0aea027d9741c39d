"""Prometheus metrics, request ids, and the ASGI middleware that feeds both and the access
log (app.logs)."""

from __future__ import annotations

import contextvars
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.headers import first_header
from app.logs import ACCESS_LOGGER, access_line, access_record, request_id_var

# Headers every answer to the current request carries once they are known, problems
# included (errors.problem_response): the caller's RateLimit-* fields once the request was
# counted (rate_limits). A fresh dict per request, filled in place, so code running in a
# copy of the request's context fills the same one.
carried_headers: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "carried_headers", default=None
)
# Where the request id also lives, for code that runs after the middleware's context is gone
# (Starlette's 500 handler).
REQUEST_ID_SCOPE_KEY = "atelier.request_id"
AFTER_RESPONSE_SCOPE_KEY = "atelier.after_response"


def after_response(scope: Scope, callback: Callable[[], Awaitable[None]]) -> None:
    """Have `callback` run once the request's answer has been sent, or its handling failed,
    in RequestContextMiddleware: last registered, first run.

    For what a dependency hands out and must give back (a pooled connection): FastAPI runs a
    generator dependency's exit through a context manager, a cancel scope and an exit stack,
    about 35 µs a request more than a plain one (bench/app_cpu.py). HTTP requests only: a
    websocket route has no such list, and a dependency registering there is refused."""
    callbacks: list[Callable[[], Awaitable[None]]] | None = scope.get(AFTER_RESPONSE_SCOPE_KEY)
    if callbacks is None:
        raise RuntimeError("after_response needs RequestContextMiddleware around the app")
    callbacks.append(callback)


_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "atelier_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.credits_spent = Counter(
            "atelier_credits_spent_total",
            "Credits debited for work, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.provider_latency = Histogram(
            "atelier_provider_request_duration_seconds",
            "Time one image provider took for one job, by provider, model and outcome "
            "(ok, refused, invalid, unavailable, timeout).",
            ["provider", "model", "outcome"],
            buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.provider_errors = Counter(
            "atelier_provider_errors_total",
            "Image provider calls that drew no image, by provider, model and error "
            "(refused, invalid, unavailable, timeout).",
            ["provider", "model", "error"],
            registry=self.registry,
        )
        self.provider_fallbacks = Counter(
            "atelier_provider_fallbacks_total",
            "Times a job moved on from a provider's model, by provider, model and reason "
            "(unavailable, timeout, circuit_open; next_model inside one provider).",
            ["provider", "model", "reason"],
            registry=self.registry,
        )


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Callable[[], None]:
    """Serve `registry` on host:port with prometheus_client's own small HTTP server (a thread
    of its own, so a scrape is answered even while the event loop is busy); returns the
    function that stops it. Blocking: call both in a thread from async code."""
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


class RequestIds:
    """Request ids: 32 hex digits from a random generator seeded once per process from the
    OS, so they are unique (and say nothing of the request rate) without asking the OS for
    randomness per request (`secrets.token_hex` was 3% of a `/v1/me` request:
    bench/reads.py). They need not be unguessable."""

    def __init__(self) -> None:
        self._random = random.Random(os.urandom(16))

    def __call__(self) -> str:
        return f"{self._random.getrandbits(128):032x}"


HeaderPolicy = Callable[[str], list[tuple[bytes, bytes]]]


class RequestContextMiddleware:
    """Request id in and out (`X-Request-ID`), one access log line, latency metrics; and
    API answers (under /v1/) are per caller: `Cache-Control: no-store` unless a route set
    its own, and `Vary: Authorization`, so no shared cache keeps or mixes them.

    `headers(path)` gives the headers every answer on `path` carries unless the route set
    them itself (app.headers' security headers), added in the same pass: one middleware
    layer less per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, headers: HeaderPolicy) -> None:
        self.app = app
        self.metrics = metrics
        self.headers = headers
        self.log = logging.getLogger(ACCESS_LOGGER)
        self.root = logging.getLogger()
        # the latency histogram's series by (route, method, status): labels() validates and
        # locks on every call (a method is one of llhttp's few, so this stays small)
        self.series: dict[tuple[str, str, int], Any] = {}
        self.new_id = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = first_header(scope, b"x-request-id")
        incoming = sent.decode("latin-1") if sent is not None else None
        request_id = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else self.new_id()
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        callbacks: list[Callable[[], Awaitable[None]]] = []
        scope[AFTER_RESPONSE_SCOPE_KEY] = callbacks
        token = request_id_var.set(request_id)
        carried = carried_headers.set({})
        started = time.perf_counter()
        status = 500

        per_caller = scope["path"].startswith("/v1/")
        extra = self.headers(scope["path"])

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(item for item in extra if item[0] not in present)
                headers.append((b"x-request-id", request_id.encode()))
                if per_caller:
                    if b"cache-control" not in present:
                        headers.append((b"cache-control", b"no-store"))
                    headers.append((b"vary", b"Authorization"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            try:
                await self._after_response(callbacks)
            finally:  # a cancellation that reaches the clean-up still gets its line
                self._record(scope, status, time.perf_counter() - started, request_id)
                request_id_var.reset(token)
                carried_headers.reset(carried)

    async def _after_response(self, callbacks: list[Callable[[], Awaitable[None]]]) -> None:
        while callbacks:
            try:
                await callbacks.pop()()
            except Exception:
                self.log.exception("A request's clean-up failed")

    def _record(self, scope: Scope, status: int, elapsed: float, request_id: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        key = (template, scope["method"], status)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = self.metrics.requests.labels(*key[:2], str(status))
        series.observe(elapsed)
        if self.log.isEnabledFor(logging.INFO):
            self._log_access(scope["method"], scope["path"], status, elapsed, request_id)

    def _log_access(
        self, method: str, path: str, status: int, elapsed: float, request_id: str
    ) -> None:
        """One line. Where only configure_logging's JSON queue would see the record (what
        `atelier serve` runs), the line is made here and queued as it is: a LogRecord made,
        handled, queued and formatted on the log thread cost about 45 µs of a `/v1/me`
        request's CPU in process, the line about 20 (bench/app_cpu.py). Anywhere else (a
        text log, a handler of a test's own), a record goes through logging."""
        direct = logs.json_queue()
        if direct is not None and self._only_queued_to(direct[0]):
            line = access_line(method, path, status, elapsed, request_id, time.time())
            direct[1].put(line)
        else:
            self.log.handle(access_record(self.log, method, path, status, elapsed))

    def _only_queued_to(self, queued: logging.Handler) -> bool:
        """Whether the access log's records would reach `queued` and no other handler, with
        no filter on the way."""
        if self.root.handlers != [queued] or queued.filters or queued.level > logging.INFO:
            return False
        if self.log.disabled:
            return False
        logger: logging.Logger | None = self.log
        while logger is not None and logger is not self.root:
            if logger.handlers or logger.filters or not logger.propagate:
                return False
            logger = logger.parent
        return True
