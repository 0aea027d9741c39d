"""Logs: one JSON object a line (or text for a person at a terminal), written from a thread of
its own, each line with the request id of the context it was logged in; and the access log's
line, which RequestContextMiddleware (app.observability) writes for every request."""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import queue
import sys
import time
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)


# Where a queued record keeps the request id of the context it was logged in (the log thread
# that formats it has none); never written out as an extra field.
REQUEST_ID_RECORD_ATTR = "atelier_request_id"
ACCESS_LOGGER = "atelier.access"
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
        data: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname.lower()}
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


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def access_record(
    log: logging.Logger, method: str, path: str, status: int, elapsed: float
) -> logging.LogRecord:
    """The access log's record for one request (its time is now)."""
    # made directly: Logger.info would also look up its caller's frame, a field no formatter
    # here writes (~3 µs a line)
    return log.makeRecord(
        log.name,
        logging.INFO,
        __file__,
        0,
        "%s %s %s",
        (method, path, status),
        None,
        extra={"status": status, "duration_ms": round(elapsed * 1000, 2)},
    )


def access_line(
    method: str, path: str, status: int, elapsed: float, request_id: str, created: float
) -> str:
    """What JsonFormatter writes for access_record's record made at `created` in the request
    `request_id` (tests/unit/test_log_thread.py compares the two), made without a record."""
    message = json.dumps(f"{method} {path} {status}")  # the path may hold any character
    return (
        f'{{"ts": "{_timestamp(created)}", "level": "info", '
        f'"request_id": {json.dumps(request_id)}, "logger": "{ACCESS_LOGGER}", '
        f'"msg": {message}, "status": {status}, "duration_ms": {round(elapsed * 1000, 2)!r}}}'
    )


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
    one flush: a write to a pipe wakes its reader. With a pipe as stderr, a line cost 34 µs
    of the service's CPU written one at a time with python-json-logger, 17 µs then. Lines
    put as strings (access_line) are written as they are. Idle, it blocks as usual, and a
    line after a quiet spell is written at once.

    Under load each of its turns cost the event loop's thread far more than the turn
    itself (the GIL changing hands): gathering for 5 ms, `/v1/me` cost 318 µs of server CPU,
    for 50 ms 297 µs (bench/served_ab.py; no access log at all: about 270). A line waits
    at most that long; stop_logging (at exit) writes out what waits."""

    GATHER_SECONDS = 0.05
    MAX_GATHERED = 256

    def __init__(self, records: _Queue, handler: logging.StreamHandler[Any]) -> None:
        super().__init__(records, handler)
        self._records = records
        self._stream = handler
        self._gathered: list[logging.LogRecord | str] = []

    def dequeue(self, block: bool) -> logging.LogRecord:
        try:
            record = self._records.get_nowait()
        except queue.Empty:
            self._write_gathered()
            time.sleep(self.GATHER_SECONDS)
            record = self._records.get(block)
        if record is self._sentinel:  # type: ignore[attr-defined]  # stopping: write the rest
            self._write_gathered()
        return record  # type: ignore[return-value]  # or a line, which handle() takes too

    def handle(self, record: logging.LogRecord | str) -> None:
        self._gathered.append(record if isinstance(record, str) else self.prepare(record))
        if len(self._gathered) >= self.MAX_GATHERED:  # a queue that never runs dry
            self._write_gathered()

    def _write_gathered(self) -> None:
        records, self._gathered = self._gathered, []
        handler = self._stream
        lines = []
        for record in records:
            if isinstance(record, str):  # a line written as it is (access_line)
                lines.append(record + handler.terminator)
                continue
            if record.levelno < handler.level or not handler.filter(record):
                continue
            try:
                lines.append(handler.format(record) + handler.terminator)
            except Exception:
                handler.handleError(record)
        if not lines:
            return
        with handler.lock or contextlib.nullcontext():
            try:
                handler.stream.write("".join(lines))
                handler.flush()
            except Exception:
                handler.handleError(logging.makeLogRecord({"msg": f"{len(lines)} log lines"}))


_Queue = queue.SimpleQueue[logging.LogRecord | str]
_listener: QueueListener | None = None
# json_queue()
_json_queue: tuple[_ContextQueueHandler, _Queue] | None = None


def configure_logging(level: str, as_json: bool | None) -> None:
    """Log to stderr from a thread of its own (stdlib QueueHandler and QueueListener), so a
    slow or full stderr pipe never stalls the event loop. The queue is unbounded, as the
    stdlib's recipe has it: a line is never dropped.

    `as_json` None (LOG_JSON unset) chooses by where stderr goes: text for a person at a
    terminal, one JSON object a line for anything else (a pipe, a file, a log collector)."""
    global _listener, _json_queue
    stop_logging()
    if as_json is None:
        as_json = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    records: _Queue = queue.SimpleQueue()
    _listener = _LogListener(records, handler)
    _listener.start()
    atexit.unregister(stop_logging)  # registered once, however often this is called
    atexit.register(stop_logging)
    root = logging.getLogger()
    queued = _ContextQueueHandler(records)
    root.handlers[:] = [queued]
    _json_queue = (queued, records) if as_json else None
    root.setLevel(level.upper())
    # uvicorn's own access log repeats what the middleware logs, without the request id
    logging.getLogger("uvicorn.access").disabled = True


def json_queue() -> tuple[logging.Handler, _Queue] | None:
    """configure_logging's queue handler and its queue while it writes JSON; a line put in
    that queue as a string is written as it is (RequestContextMiddleware's access log)."""
    return _json_queue


def stop_logging() -> None:
    """Write out what is queued and stop the log thread (at exit, or to reconfigure); what
    is logged afterwards is written directly."""
    global _listener, _json_queue
    _json_queue = None
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
