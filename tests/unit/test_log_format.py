"""With LOG_JSON unset, logs are text for a person at a terminal (stderr a TTY: here a real
pseudo-terminal) and one JSON object a line for anything else (a pipe); LOG_JSON decides
when set."""

from __future__ import annotations

import contextlib
import logging
import os
import pty
from collections.abc import Iterator
from typing import IO

import pytest

from app.config import Settings
from app.logs import configure_logging, stop_logging
from tests.fakes.running import json_lines

log = logging.getLogger("atelier.test.logformat")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access_disabled = logging.getLogger("uvicorn.access").disabled
    try:
        yield
    finally:
        stop_logging()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("uvicorn.access").disabled = access_disabled


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # a pty's reader sees EIO once the writer's side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def _logged_through(stream: IO[str], as_json: bool | None) -> None:
    """Configure logging onto `stream` as stderr, log a line, write everything out."""
    with contextlib.redirect_stderr(stream):
        configure_logging("INFO", as_json)
        log.info("the worker took %d job(s)", 2, extra={"jobs": 2})
        stop_logging()
    stream.close()


def _through_a_terminal(as_json: bool | None) -> str:
    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "w")
    assert stream.isatty()
    _logged_through(stream, as_json)
    try:
        return _read_all(leader).replace("\r\n", "\n")
    finally:
        os.close(leader)


def _through_a_pipe(as_json: bool | None) -> str:
    reader, writer = os.pipe()
    stream = os.fdopen(writer, "w")
    assert not stream.isatty()
    _logged_through(stream, as_json)
    with os.fdopen(reader) as read_end:
        return read_end.read()


def test_unset_log_json_means_text_at_a_terminal_and_json_down_a_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOG_JSON", raising=False)
    assert Settings(_env_file=None).log_json is None  # the default chooses by the stream

    at_terminal = _through_a_terminal(None)
    assert at_terminal == "INFO atelier.test.logformat: the worker took 2 job(s)\n"

    [entry] = json_lines(_through_a_pipe(None))
    assert (entry["level"], entry["logger"], entry["msg"]) == (
        "info",
        "atelier.test.logformat",
        "the worker took 2 job(s)",
    )
    assert entry["jobs"] == 2


def test_log_json_when_set_wins_over_the_stream() -> None:
    [entry] = json_lines(_through_a_terminal(True))
    assert entry["msg"] == "the worker took 2 job(s)"
    assert _through_a_pipe(False) == "INFO atelier.test.logformat: the worker took 2 job(s)\n"


def test_production_logs_json_even_at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container run with a terminal (`docker run -t`, `tty: true`) still feeds a log
    collector: ENV=production means JSON unless LOG_JSON says otherwise."""
    monkeypatch.delenv("LOG_JSON", raising=False)
    # model_construct: production's other checks (DATABASE_URL, R2, …) are not the point
    production = Settings.model_construct(env="production", log_json=None)
    assert production.logs_as_json is True
    [entry] = json_lines(_through_a_terminal(production.logs_as_json))
    assert entry["msg"] == "the worker took 2 job(s)"
    assert Settings.model_construct(env="production", log_json=False).logs_as_json is False
    assert Settings(_env_file=None).logs_as_json is None  # development: by the stream
