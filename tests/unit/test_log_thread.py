"""Logs are written from a thread of their own (app.observability.configure_logging): a slow
stderr never stalls the caller, and every line still says what the caller's context knew."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from app.observability import (
    REQUEST_ID_RECORD_ATTR,
    configure_logging,
    request_id_var,
    stop_logging,
)
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
