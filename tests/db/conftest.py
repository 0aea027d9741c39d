"""Databases for the migration tests: empty ones, and the app's live database."""

from __future__ import annotations

import pytest

from tests.db import connected
from tests.fakes.mobile_app import apply_baseline, seed_live_rows


@pytest.fixture
async def live_url(empty_url: str) -> str:
    """The app's database as it is before the service: baseline schema and the app's rows."""
    async with connected(empty_url) as conn:
        await apply_baseline(conn)
        await seed_live_rows(conn)
    return empty_url


@pytest.fixture(params=["empty", "live"])
async def start_url(request: pytest.FixtureRequest, empty_url: str) -> str:
    """Each test that uses it runs twice: from an empty database and from the live one."""
    if request.param == "live":
        async with connected(empty_url) as conn:
            await apply_baseline(conn)
            await seed_live_rows(conn)
    return empty_url
