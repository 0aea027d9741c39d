"""Fixtures the bearer-token tests share: one database per module, a loopback Clerk JWKS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.config import Settings
from tests.fakes.jwks import AUTHORIZED_PARTY, ISSUER, JwksServer, SigningKey, signing_key

ClerkSettings = Callable[..., Settings]


@pytest.fixture(scope="module")
def module_db_url(
    template_db: str, new_database: Callable[..., str], drop_database: Callable[[str], None]
) -> Iterator[str]:
    """One migrated database for the module: its tests assert on answers, each with
    subjects of its own, so they need not pay for a fresh database apiece."""
    url = new_database(template_db)
    yield url
    drop_database(url)


@pytest.fixture
def make_app_settings(module_db_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(**changes: object) -> Settings:
        fields: dict[str, object] = {
            "env": "test",
            "database_url": module_db_url,
            "data_dir": tmp_path / "data",
            "auth": "dev",
            "log_json": False,
            "db_pool_min_size": 1,
            "db_pool_max_size": 20,
        }
        fields.update(changes)
        return Settings(_env_file=None, **fields)  # type: ignore[arg-type]

    return make


@pytest.fixture
def key() -> SigningKey:
    return signing_key("primary")


@pytest.fixture
def jwks(key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer(key) as server:
        yield server


@pytest.fixture
def clerk_settings(make_app_settings: Callable[..., Settings], jwks: JwksServer) -> ClerkSettings:
    """Settings for AUTH=clerk against the loopback JWKS, with some fields changed."""

    def make(**changes: object) -> Settings:
        fields: dict[str, object] = {
            "auth": "clerk",
            "clerk_issuer": ISSUER,
            "clerk_jwks_url": jwks.url,
            "clerk_authorized_parties": [AUTHORIZED_PARTY],
        }
        fields.update(changes)
        return make_app_settings(**fields)

    return make
