"""An app whose ADMIN_USER_IDS names one administrator, and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app

ADMIN = "user_admin_root"


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    """The app with one administrator and no in-process worker (jobs stay as made)."""
    application = create_app(make_settings(admin_user_ids=[ADMIN], worker_in_process=False))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://atelier.test") as c:
        yield c
