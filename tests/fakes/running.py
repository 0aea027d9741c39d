"""Run an app built in a test (with its lifespan) behind an httpx client, and JSON log capture."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from app.config import Settings
from app.logs import configure_logging, stop_logging
from app.main import create_app


@asynccontextmanager
async def running(
    app: FastAPI, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan runs around the client, as under uvicorn."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://atelier.test") as c:
            yield c


@asynccontextmanager
async def running_settings(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """`running` for an app made from these settings."""
    async with running(create_app(settings)) as client:
        yield client


def worker_env(settings: Settings, **changes: str) -> dict[str, str]:
    """The environment of an `atelier worker` (or other CLI) subprocess on the test's
    database and DATA_DIR: this run's own database settings replace whatever is set."""
    assert settings.database_url is not None
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "TEST_DATABASE_URL", "DIRECT_URL")
    }
    env.update(
        DATABASE_URL=settings.database_url.get_secret_value(),
        DATA_DIR=str(settings.data_dir),
        ENV="test",
        AUTH="dev",
        LOG_JSON="false",
        LOG_LEVEL="INFO",
        MIGRATE_ON_START="false",
        DB_POOL_MIN_SIZE="1",
    )
    env.update(changes)
    return env


@contextmanager
def json_logging(level: str = "INFO") -> Iterator[None]:
    """The app's own JSON logging to (the current) sys.stderr; the previous setup comes back."""
    root = logging.getLogger()
    uvicorn_access = logging.getLogger("uvicorn.access")
    handlers, root_level, access_disabled = root.handlers[:], root.level, uvicorn_access.disabled
    configure_logging(level, True)
    try:
        yield
    finally:
        stop_logging()  # writes out what the log thread has queued
        for handler in root.handlers:
            handler.flush()
        root.handlers[:] = handlers
        root.setLevel(root_level)
        uvicorn_access.disabled = access_disabled


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object (fails on a line that is not one)."""
    entries = []
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            entries.append(entry)
    return entries
