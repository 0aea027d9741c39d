"""Local storage: files under the root, written atomically, keys that could leave the root
refused, and the URL signing secret shared by every process."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from app.config import Settings
from app.services.storage.base import ObjectNotFound, StorageError
from app.services.storage.factory import LOCAL_SECRET_FILE, build_storage
from app.services.storage.local import LocalStorage, load_or_create_secret

SECRET = b"k" * 32
BASE_URL = "http://atelier.test"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(64)
KEY = "generations/user_1/job_1.png"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "data" / "objects", SECRET, BASE_URL)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# -- the store ------------------------------------------------------------------------------


async def test_put_get_exists_delete_round_trip(storage: LocalStorage) -> None:
    await storage.put(KEY, PNG, "image/png")

    assert (storage.root / KEY).read_bytes() == PNG
    assert await storage.get(KEY) == PNG
    assert await storage.exists(KEY)
    await storage.delete(KEY)
    assert not await storage.exists(KEY)
    assert not (storage.root / KEY).exists()
    await storage.delete(KEY)  # deleting what is gone is no error
    with pytest.raises(ObjectNotFound):
        await storage.get(KEY)


async def test_concurrent_puts_leave_one_whole_object_and_no_temp_files(
    storage: LocalStorage,
) -> None:
    payloads = [bytes([n]) * 300_000 for n in range(16)]

    await asyncio.gather(*(storage.put(KEY, p, "image/png") for p in payloads))

    assert await storage.get(KEY) in payloads
    assert os.listdir(storage.root / "generations" / "user_1") == ["job_1.png"]


async def test_a_directory_key_is_not_an_object(storage: LocalStorage) -> None:
    await storage.put(KEY, PNG, "image/png")

    assert not await storage.exists("generations/user_1")
    with pytest.raises(ObjectNotFound):
        await storage.get("generations/user_1")


async def test_unwritable_root_raises_storage_error(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_bytes(b"a file where the objects directory should be")
    storage = LocalStorage(blocked, SECRET, BASE_URL)

    with pytest.raises(StorageError) as caught:
        await storage.put(KEY, PNG, "image/png")
    assert not isinstance(caught.value, ObjectNotFound)
    assert blocked.read_bytes().startswith(b"a file where")


# An absolute path is spelled inside the test's own tmp_path (see ABSOLUTE below): if the
# validation ever regressed, the write must land somewhere harmless, never in /etc.
ABSOLUTE = "<absolute path under tmp_path>"
BAD_KEYS = [
    "",
    ABSOLUTE,
    "../escape.png",
    "generations/../../escape.png",
    "generations/..",
    "generations/./x.png",
    ".",
    "..",
    "a//b.png",
    "a/",
    "a\\b.png",
    "..\\escape.png",
    "a\x00b.png",
    "a b.png",
    "caf\u00e9.png",
    "%2e%2e/escape.png",
    "x.png\n",
    "k" * 256,
    "/".join(["k" * 200] * 3),
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_raise_value_error(tmp_path: Path, key: str) -> None:
    if key == ABSOLUTE:
        key = str(tmp_path / "outside" / "victim.png")
    root = tmp_path / "deep" / "data" / "objects"
    storage = LocalStorage(root, SECRET, BASE_URL)

    with pytest.raises(ValueError):
        await storage.put(key, PNG, "image/png")
    for call in (storage.get(key), storage.exists(key), storage.delete(key)):
        with pytest.raises(ValueError):
            await call
    with pytest.raises(ValueError):
        storage.url(key, expires_in=60)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "key", ["uploads/u_2Xy/a.b-c_d.webp", "x.png", "k" * 255 + "/" + "k" * 255, ".hidden"]
)
async def test_safe_keys_are_accepted(storage: LocalStorage, key: str) -> None:
    await storage.put(key, PNG, "image/png")
    assert await storage.get(key) == PNG


# -- the secret and the factory -------------------------------------------------------------


def test_factory_builds_local_storage_with_one_shared_secret(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, env="test", data_dir=tmp_path, storage="local")
    first, second = build_storage(settings), build_storage(settings)

    assert isinstance(first, LocalStorage) and isinstance(second, LocalStorage)
    assert first.root == settings.objects_dir
    secret_file = tmp_path / LOCAL_SECRET_FILE
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert second.signature_matches(KEY, 123, first.sign(KEY, 123))
    assert first.sign(KEY, 123) != LocalStorage(tmp_path, SECRET, BASE_URL).sign(KEY, 123)


def test_racing_processes_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / LOCAL_SECRET_FILE
    found: list[bytes] = []
    barrier = threading.Barrier(8)

    def load() -> None:
        barrier.wait()
        found.append(load_or_create_secret(path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 8 and len(set(found)) == 1 and len(found[0]) == 32
    assert os.listdir(path.parent) == [LOCAL_SECRET_FILE]


async def test_a_url_is_valid_long_enough_and_stays_the_same_for_a_while(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image caches key on the URL: within a step of half the lifetime it must not change,
    and it must never be valid for less than asked, also when links of another lifetime
    (a download's) are asked for in between."""
    clock = [1_800_000_000.0]
    monkeypatch.setattr("app.services.storage.local.time.time", lambda: clock[0])
    urls: dict[int, list[str]] = {3600: [], 300: []}
    for now in range(1_800_000_000, 1_800_000_000 + 7200, 37):
        clock[0] = float(now)
        for lifetime, seen in urls.items():
            url = storage.url(KEY, expires_in=lifetime)
            exp = int(parse_qs(urlsplit(url).query)["exp"][0])
            assert now + lifetime <= exp < now + lifetime * 3 // 2, (now, lifetime, exp)
            seen.append(url)
    # 7,200 s of requests, 3,600 s links: a handful of distinct URLs, not one per second.
    assert 4 <= len(set(urls[3600])) <= 5, len(set(urls[3600]))
    assert 48 <= len(set(urls[300])) <= 49, len(set(urls[300]))


async def test_configured_secret_signs_the_urls(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        env="test",
        data_dir=tmp_path,
        local_url_secret="configured-secret",
        public_base_url="https://api.atelier.test/",
    )
    storage = build_storage(settings)

    url = urlsplit(storage.url(KEY, expires_in=60))
    query = parse_qs(url.query)
    message = f"{KEY}\n{query['exp'][0]}".encode()
    expected = hmac.new(b"configured-secret", message, hashlib.sha256).hexdigest()
    assert (url.scheme, url.netloc, url.path) == ("https", "api.atelier.test", f"/files/{KEY}")
    assert query["sig"] == [expected]
    assert not (tmp_path / LOCAL_SECRET_FILE).exists()
