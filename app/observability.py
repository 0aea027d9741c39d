"""JSON logs with a request id, Prometheus metrics, and the ASGI middleware that feeds both."""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import os
import queue
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.headers import first_header

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
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


# Where a queued record keeps the request id of the context it was logged in (the log thread
# that formats it has none); never written out as an extra field.
REQUEST_ID_RECORD_ATTR = "atelier_request_id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    REQUEST_ID_RECORD_ATTR,
    "color_message",  # uvicorn's message again, with terminal colour codes
}
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, request_id (when there is one), logger, msg, a dict
    message's keys, the record's extras, exc for an exception and stack_info for a stack.

    Written out rather than python-json-logger's JsonFormatter: its generic field handling
    (renames, reserved attributes, defaults) took 11.6 µs a line against 6.5 µs here, and the
    access log writes a line per request (bench/reads.py)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
        }
        request_id = getattr(record, REQUEST_ID_RECORD_ATTR, None) or request_id_var.get()
        if request_id:
            data["request_id"] = request_id  # before the extras: an explicit one wins
        data["logger"] = record.name
        if isinstance(record.msg, dict):  # its keys are the fields; no message text
            data["msg"] = ""
            data.update(record.msg)
        else:
            data["msg"] = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        # A copy: another handler of the same record (pytest's) may add attributes to it
        # from the caller's thread meanwhile. Private ones (a leading _) are not fields.
        for key, value in tuple(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        return json.dumps(data, default=str)


class _ContextQueueHandler(QueueHandler):
    """Hands records to the log thread. What could change once the call returns is settled
    here: the message with its arguments, the traceback's text, and the request id of the
    caller's context. The JSON encoding and the write happen on the log thread.

    The record is changed in place rather than copied (3.4 µs a line, measured here): any
    other handler (pytest's) still sees the same message, and the exception is kept."""

    _exceptions = logging.Formatter()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if isinstance(record.msg, dict):  # JsonFormatter writes a dict's keys as fields
            record.msg = dict(record.msg)
        elif record.args:
            record.msg = record.getMessage()
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exceptions.formatException(record.exc_info)
        setattr(record, REQUEST_ID_RECORD_ATTR, request_id_var.get())
        return record


class _LogListener(QueueListener):
    """The log thread. It lets a burst gather before it waits again (a put into a queue that
    no thread is waiting on wakes none, so under load the loop does not pay a thread wake-up
    per line), and it writes what it gathered (up to MAX_GATHERED lines) with one write and
    one flush per stream: a write to a pipe wakes its reader. With a pipe as stderr, a line
    cost 34 µs of the service's CPU written one at a time with python-json-logger, 17 µs
    now. Idle, it blocks as usual."""

    GATHER_SECONDS = 0.005
    MAX_GATHERED = 256

    def __init__(
        self, records: queue.SimpleQueue[logging.LogRecord], *handlers: logging.StreamHandler[Any]
    ) -> None:
        super().__init__(records, *handlers)
        self._records = records
        self._streams: tuple[logging.StreamHandler[Any], ...] = handlers
        self._gathered: list[logging.LogRecord] = []

    def dequeue(self, block: bool) -> logging.LogRecord:
        try:
            record = self._records.get_nowait()
        except queue.Empty:
            self._write_gathered()
            time.sleep(self.GATHER_SECONDS)
            record = self._records.get(block)
        if record is self._sentinel:  # type: ignore[attr-defined]  # stopping: write the rest
            self._write_gathered()
        return record

    def handle(self, record: logging.LogRecord) -> None:
        self._gathered.append(self.prepare(record))
        if len(self._gathered) >= self.MAX_GATHERED:  # a queue that never runs dry
            self._write_gathered()

    def _write_gathered(self) -> None:
        records, self._gathered = self._gathered, []
        if not records:
            return
        for handler in self._streams:
            lines = []
            for record in records:
                if record.levelno < handler.level or not handler.filter(record):
                    continue
                try:
                    lines.append(handler.format(record) + handler.terminator)
                except Exception:
                    handler.handleError(record)
            if not lines:
                continue
            with handler.lock or contextlib.nullcontext():
                try:
                    handler.stream.write("".join(lines))
                    handler.flush()
                except Exception:
                    handler.handleError(records[-1])


_listener: QueueListener | None = None


def configure_logging(level: str, as_json: bool | None) -> None:
    """Log to stderr from a thread of its own (stdlib QueueHandler and QueueListener), so a
    slow or full stderr pipe never stalls the event loop. The queue is unbounded, as the
    stdlib's recipe has it: a line is never dropped.

    `as_json` None (LOG_JSON unset) chooses by where stderr goes: text for a person at a
    terminal, one JSON object a line for anything else (a pipe, a file, a log collector)."""
    global _listener
    stop_logging()
    if as_json is None:
        as_json = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = _LogListener(records, handler)
    _listener.start()
    atexit.unregister(stop_logging)  # registered once, however often this is called
    atexit.register(stop_logging)
    root = logging.getLogger()
    root.handlers[:] = [_ContextQueueHandler(records)]
    root.setLevel(level.upper())
    # uvicorn's own access log repeats what the middleware logs, without the request id
    logging.getLogger("uvicorn.access").disabled = True


def stop_logging() -> None:
    """Write out what is queued and stop the log thread (at exit, or to reconfigure); what
    is logged afterwards is written directly."""
    global _listener
    if _listener is None:
        return
    _listener.stop()
    root = logging.getLogger()
    root.handlers[:] = [
        direct
        for handler in root.handlers
        for direct in (
            _listener.handlers if isinstance(handler, _ContextQueueHandler) else (handler,)
        )
    ]
    _listener = None


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
        self.log = logging.getLogger("atelier.access")
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
                self._record(scope, status, time.perf_counter() - started)
                request_id_var.reset(token)
                carried_headers.reset(carried)

    async def _after_response(self, callbacks: list[Callable[[], Awaitable[None]]]) -> None:
        while callbacks:
            try:
                await callbacks.pop()()
            except Exception:
                self.log.exception("A request's clean-up failed")

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        self.metrics.requests.labels(template, scope["method"], str(status)).observe(elapsed)
        if self.log.isEnabledFor(logging.INFO):
            # made and handled directly: Logger.info would also look up its caller's frame,
            # a field no formatter here writes (~3 µs a line)
            line = self.log.makeRecord(
                self.log.name,
                logging.INFO,
                __file__,
                0,
                "%s %s %s",
                (scope["method"], scope["path"], status),
                None,
                extra={"status": status, "duration_ms": round(elapsed * 1000, 2)},
            )
            self.log.handle(line)
