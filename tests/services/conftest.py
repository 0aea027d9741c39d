"""Fixtures for the service tests: the service's own pool and store on this test's database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.config import Settings
from app.db import pool as db_pool
from app.services.storage.base import Storage
from app.services.storage.factory import build_storage


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool set up as the service's (JSON codecs included), up to 20 connections."""
    created = await db_pool.create_pool(settings)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
def storage(settings: Settings) -> Storage:
    """The local store under this test's DATA_DIR; a submission without a reference never
    touches it, but the service takes one as the router passes it."""
    return build_storage(settings)
