"""Storage.delete_prefix, what an erasure sweeps a user's folders with: every object under
the folder goes (in pages, on R2), nothing beside it (`uploads/user_1/` never touches
`uploads/user_10/`), and a prefix that is not a folder is refused before anything is asked."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.services.storage import r2 as r2_module
from app.services.storage.base import Storage, StorageError
from app.services.storage.factory import build_storage
from app.services.storage.local import LocalStorage
from app.services.storage.r2 import R2Storage
from tests.fakes.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, FakeS3

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(256)
MINE = ["uploads/user_1/a.png", "uploads/user_1/b.jpg", "uploads/user_1/deeper/c.webp"]
THEIRS = ["uploads/user_10/a.png", "uploads/user_1.png", "generations/user_1/j.png"]
BAD_PREFIXES = ["", "/", "uploads", "uploads/user_1", "../", "uploads/../", "/etc/", "a//"]


@pytest.fixture(scope="module")
def s3() -> Iterator[FakeS3]:
    with FakeS3() as server:
        yield server


@pytest.fixture(params=["local", "r2"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3: FakeS3
) -> AsyncIterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "objects", b"k" * 32, "http://atelier.test")
        return
    settings = Settings(
        _env_file=None,
        env="test",
        data_dir=tmp_path,
        storage="r2",
        r2_endpoint=s3.endpoint,
        r2_bucket_name=s3.create_bucket(),
        r2_access_key_id=ACCESS_KEY_ID,
        r2_secret_access_key=SECRET_ACCESS_KEY,
        storage_timeout_seconds=5.0,
    )
    storage = build_storage(settings)
    yield storage
    await storage.aclose()


async def put_all(store: Storage, keys: list[str]) -> None:
    for key in keys:
        await store.put(key, PNG, "image/png")


async def test_everything_under_the_folder_goes_and_nothing_beside_it(store: Storage) -> None:
    await put_all(store, MINE + THEIRS)

    assert await store.delete_prefix("uploads/user_1/") == len(MINE)

    for key in MINE:
        assert not await store.exists(key), key
    for key in THEIRS:
        assert await store.exists(key), key
    assert await store.delete_prefix("uploads/user_1/") == 0  # again: nothing, no error
    assert await store.delete_prefix("uploads/nobody/") == 0


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
async def test_a_prefix_that_is_not_a_folder_is_refused(store: Storage, prefix: str) -> None:
    await put_all(store, MINE)
    with pytest.raises(ValueError):
        await store.delete_prefix(prefix)
    for key in MINE:
        assert await store.exists(key)


async def test_r2_deletes_page_by_page(
    s3: FakeS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(r2_module, "_DELETE_BATCH", 2)
    bucket = s3.create_bucket()
    storage = R2Storage(
        endpoint=s3.endpoint,
        bucket=bucket,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        timeout_seconds=5.0,
    )
    try:
        keys = [f"uploads/user_1/{i}.png" for i in range(5)]
        await put_all(storage, keys + ["uploads/user_2/x.png"])
        sent: list[Any] = []
        storage.client.meta.events.register(
            "before-send.s3.DeleteObjects", lambda request, **_: sent.append(request)
        )
        assert await storage.delete_prefix("uploads/user_1/") == 5
        assert len(sent) == 3  # pages of 2, 2 and 1
        assert s3.keys(bucket) == ["uploads/user_2/x.png"]
    finally:
        await storage.aclose()


async def test_r2_unreachable_is_a_storage_error(tmp_path: Path) -> None:
    storage = R2Storage(
        endpoint="http://127.0.0.1:9",
        bucket="nothing",
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        timeout_seconds=1.0,
    )
    try:
        with pytest.raises(StorageError):
            await storage.delete_prefix("uploads/user_1/")
    finally:
        await storage.aclose()
