"""Logs are written from a thread of their own (app.logs.configure_logging): a slow
stderr never stalls the caller, and every line still says what the caller's context knew."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.logs import (
    ACCESS_LOGGER,
    REQUEST_ID_RECORD_ATTR,
    JsonFormatter,
    access_line,
    access_record,
    configure_logging,
    request_id_var,
    stop_logging,
)
from app.observability import Metrics, RequestContextMiddleware
from tests.fakes.running import json_lines

log = logging.getLogger("atelier.test.logthread")


class RecordingStream(io.StringIO):
    """A stderr that notes which threads wrote to it, and can be made to hang."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[str] = set()
        self.writes = 0
        self.open = threading.Event()
        self.open.set()

    def write(self, text: str) -> int:
        self.open.wait(30)
        self.writers.add(threading.current_thread().name)
        self.writes += 1
        return super().write(text)


def configure(stream: RecordingStream, as_json: bool) -> None:
    # In the test's body: pytest puts its own sys.stderr back before each phase.
    with contextlib.redirect_stderr(stream):
        configure_logging("INFO", as_json)


@pytest.fixture
def stderr() -> Iterator[RecordingStream]:
    stream = RecordingStream()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access_disabled = logging.getLogger("uvicorn.access").disabled
    try:
        yield stream
    finally:
        stream.open.set()
        stop_logging()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("uvicorn.access").disabled = access_disabled


def test_lines_are_written_off_the_callers_thread_with_its_request_id(
    stderr: RecordingStream,
) -> None:
    configure(stderr, True)
    token = request_id_var.set("req-thread-1")
    try:
        log.info("hello %s", "world", extra={"status": 200})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed %d", 3)
    finally:
        request_id_var.reset(token)
    log.warning("outside any request")
    fields = {"event": "dict message"}
    log.info(fields)
    fields["event"] = "changed after the call"
    stop_logging()  # writes out the queue

    entries = json_lines(stderr.getvalue())
    assert [(e["msg"], e.get("request_id")) for e in entries] == [
        ("hello world", "req-thread-1"),
        ("failed 3", "req-thread-1"),
        ("outside any request", None),
        ("", None),
    ]
    assert entries[3]["event"] == "dict message"
    assert entries[0]["status"] == 200 and entries[0]["level"] == "info"
    assert "ValueError: boom" in entries[1]["exc"] and "Traceback" in entries[1]["exc"]
    assert all(REQUEST_ID_RECORD_ATTR not in e for e in entries)
    assert threading.current_thread().name not in stderr.writers


def test_a_hung_stderr_does_not_block_the_caller(stderr: RecordingStream) -> None:
    configure(stderr, False)
    stderr.open.clear()  # every write hangs, as on a full pipe
    began = time.monotonic()
    for i in range(100):
        log.info("line %d", i)
    assert time.monotonic() - began < 1.0
    stderr.open.set()
    stop_logging()
    lines = stderr.getvalue().splitlines()
    assert lines == [f"INFO atelier.test.logthread: line {i}" for i in range(100)]


def test_after_stop_lines_are_written_directly(stderr: RecordingStream) -> None:
    configure(stderr, False)
    stop_logging()
    log.info("late line")
    assert stderr.getvalue() == "INFO atelier.test.logthread: late line\n"
    assert stderr.writers == {threading.current_thread().name}


def test_a_burst_is_written_in_a_few_writes_in_order(stderr: RecordingStream) -> None:
    """The log thread writes what gathered while it was busy with one write, not one a line
    (each write to a pipe wakes its reader): held back here by a stderr that hangs, 500
    lines gather and go out in order in a few writes."""
    configure(stderr, False)
    stderr.open.clear()
    log.info("first line")  # the log thread takes it and hangs in its write
    for i in range(500):
        log.info("line %d", i)
    stderr.open.set()
    stop_logging()
    lines = stderr.getvalue().splitlines()
    assert lines == ["INFO atelier.test.logthread: first line"] + [
        f"INFO atelier.test.logthread: line {i}" for i in range(500)
    ]
    assert stderr.writes <= 5, stderr.writes


@pytest.mark.parametrize(
    ("method", "path", "status", "elapsed"),
    [
        ("GET", "/v1/me", 200, 0.000312),
        ("POST", "/v1/generations", 201, 1.5),
        ("DELETE", '/v1/images/"quoted"\\back', 404, 0.0),
        ("GET", "/v1/ünï/\u2028\x00\x1b[31m/\U0001f600", 500, 12.345678),
    ],
)
def test_an_access_line_is_what_the_formatter_writes_for_the_record(
    method: str, path: str, status: int, elapsed: float
) -> None:
    """The access log's line made without a record (what `atelier serve` writes) is the
    formatter's line for the record, character for character, hostile paths included."""
    record = access_record(logging.getLogger(ACCESS_LOGGER), method, path, status, elapsed)
    setattr(record, REQUEST_ID_RECORD_ATTR, "req-7")  # as the queue handler does
    line = access_line(method, path, status, elapsed, "req-7", record.created)
    assert line == JsonFormatter().format(record)


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _request(path: str) -> None:
    app = RequestContextMiddleware(_ok, Metrics(), lambda path: [])
    scope = {"type": "http", "method": "GET", "path": path, "headers": []}

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    asyncio.run(app(scope, receive, send))


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    """The access log's LogRecords made meanwhile."""
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if record.name == ACCESS_LOGGER:
            made.append(record)
        return record

    logging.setLogRecordFactory(counting)
    try:
        yield made
    finally:
        logging.setLogRecordFactory(factory)


def test_the_access_log_makes_a_record_only_where_something_else_would_see_it(
    stderr: RecordingStream, access_records: list[logging.LogRecord]
) -> None:
    configure(stderr, True)
    _request("/v1/alone")  # only the JSON log: the line is made directly
    assert access_records == []

    seen: list[logging.LogRecord] = []

    class Listening(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    listener = Listening()
    root = logging.getLogger()
    root.addHandler(listener)  # as pytest's caplog does
    try:
        _request("/v1/watched")
    finally:
        root.removeHandler(listener)
    assert [r.getMessage() for r in seen] == ["GET /v1/watched 204"] and access_records == seen

    access = logging.getLogger(ACCESS_LOGGER)
    access.disabled = True
    try:
        _request("/v1/disabled")
    finally:
        access.disabled = False
    stop_logging()
    lines = [(e["logger"], e["msg"], e["status"]) for e in json_lines(stderr.getvalue())]
    assert lines == [
        (ACCESS_LOGGER, "GET /v1/alone 204", 204),
        (ACCESS_LOGGER, "GET /v1/watched 204", 204),
    ]

    configure(stderr, False)  # a text log formats records
    _request("/v1/text")
    stop_logging()
    assert stderr.getvalue().endswith(f"INFO {ACCESS_LOGGER}: GET /v1/text 204\n")
    assert [r.getMessage() for r in access_records][-1] == "GET /v1/text 204"
