"""The files route: local storage's signed, expiring URLs served by the app; forged, expired
and path-trick requests refused without ever reading outside the objects root."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import NoMatchFound

from app.config import Settings
from app.errors import PROBLEM_JSON
from app.main import create_app
from app.routers import files
from app.services.storage.local import LocalStorage
from tests.support.live import ServedApp
from tests.support.problems import assert_problem

SECRET = b"k" * 32
BASE_URL = "http://atelier.test"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(64)
KEY = "generations/user_1/job_1.png"


def make_app(data_dir: Path, storage: LocalStorage | None) -> FastAPI:
    """The real application with the files route mounted, as the service will have it."""
    settings = Settings(_env_file=None, env="test", data_dir=data_dir, auth="dev", log_json=False)
    application = create_app(settings)
    try:
        application.url_path_for("get_file", key="x.png")
    except NoMatchFound:  # not mounted by create_app (yet): mount it here
        application.include_router(files.router)
    application.state.local_storage = storage
    return application


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "data" / "objects", SECRET, BASE_URL)


@pytest.fixture
async def files_client(tmp_path: Path, storage: LocalStorage) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(tmp_path / "data", storage))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as c:
        yield c


def signed_query(storage: LocalStorage, key: str, exp: int) -> str:
    return f"exp={exp}&sig={storage.sign(key, exp)}"


# -- signed URLs through the app ------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "media_type"),
    [(KEY, "image/png"), ("uploads/u/a.jpg", "image/jpeg"), ("uploads/u/b.webp", "image/webp")],
)
async def test_signed_url_serves_the_bytes_with_their_content_type(
    storage: LocalStorage, files_client: httpx.AsyncClient, key: str, media_type: str
) -> None:
    await storage.put(key, PNG, media_type)

    url = storage.url(key, expires_in=600)
    assert url.startswith(f"{BASE_URL}/files/{key}?exp=")
    response = await files_client.get(url)

    assert response.status_code == 200, response.text
    assert response.content == PNG
    assert response.headers["content-type"] == media_type
    assert response.headers["x-content-type-options"] == "nosniff"
    directives = [d.strip() for d in response.headers["cache-control"].split(",")]
    assert directives[0] == "private"
    max_age = int(directives[1].removeprefix("max-age="))
    assert 0 < max_age < 600 + 300  # the link lives 600 s, its expiry rounded up to 300 s


async def test_tampered_links_are_forbidden(
    storage: LocalStorage, files_client: httpx.AsyncClient
) -> None:
    await storage.put(KEY, PNG, "image/png")
    await storage.put("generations/user_2/job_9.png", b"other", "image/png")
    url = storage.url(KEY, expires_in=600)
    query = parse_qs(urlsplit(url).query)
    exp, sig = int(query["exp"][0]), query["sig"][0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]

    forgeries = [
        f"/files/{KEY}?exp={exp}&sig={flipped}",  # signature altered
        f"/files/{KEY}?exp={exp + 3600}&sig={sig}",  # expiry pushed back
        f"/files/generations/user_2/job_9.png?exp={exp}&sig={sig}",  # another key
        f"/files/{KEY}?exp={exp}&sig=",
        f"/files/{KEY}?exp={exp}&sig=%C3%A9",
    ]
    for forged in forgeries:
        body = assert_problem(await files_client.get(forged), 403)
        assert "signature" in str(body["detail"])
    assert (await files_client.get(url)).content == PNG  # the genuine link still works


async def test_expired_link_is_forbidden(
    storage: LocalStorage, files_client: httpx.AsyncClient
) -> None:
    await storage.put(KEY, PNG, "image/png")
    past = int(time.time()) - 5

    body = assert_problem(
        await files_client.get(f"/files/{KEY}?{signed_query(storage, KEY, past)}"), 403
    )
    assert "expired" in str(body["detail"])
    future = int(time.time()) + 60
    assert (
        await files_client.get(f"/files/{KEY}?{signed_query(storage, KEY, future)}")
    ).content == PNG


async def test_link_without_exp_or_sig_is_refused(files_client: httpx.AsyncClient) -> None:
    assert_problem(await files_client.get(f"/files/{KEY}"), 422)
    assert_problem(await files_client.get(f"/files/{KEY}?exp=soon&sig=00"), 422)


async def test_signed_link_to_a_missing_object_is_not_found(
    storage: LocalStorage, files_client: httpx.AsyncClient
) -> None:
    url = storage.url(KEY, expires_in=600)
    assert_problem(await files_client.get(url), 404)


async def test_files_route_is_not_found_without_local_storage(tmp_path: Path) -> None:
    signer = LocalStorage(tmp_path / "objects", SECRET, BASE_URL)
    transport = httpx.ASGITransport(app=make_app(tmp_path / "data", None))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as c:
        assert_problem(await c.get(signer.url(KEY, expires_in=60)), 404)


async def test_files_route_is_documented(tmp_path: Path) -> None:
    schema = make_app(tmp_path / "data", None).openapi()
    operation = schema["paths"]["/files/{key}"]["get"]
    assert operation["operationId"] == "get_file"
    assert set(operation["responses"]["200"]["content"]) >= {"image/png", "image/webp"}
    for status in ("403", "404", "422"):
        assert list(operation["responses"][status]["content"]) == [PROBLEM_JSON]


# -- path tricks against the real server ----------------------------------------------------


SECRET_TEXT = b"TOP-SECRET-outside-the-objects-root"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedApp, LocalStorage]]:
    base = tmp_path_factory.mktemp("served")
    data = base / "data"
    (data / "objects" / "generations" / "u").mkdir(parents=True)
    (data / "objects" / "generations" / "u" / "ok.png").write_bytes(PNG)
    # What traversal would reach: next to the root, above it, and a sibling with a prefix name.
    (data / "secret.txt").write_bytes(SECRET_TEXT)
    (base / "secret.txt").write_bytes(SECRET_TEXT)
    (data / "objects-private").mkdir()
    (data / "objects-private" / "x.png").write_bytes(SECRET_TEXT)
    storage = LocalStorage(data / "objects", SECRET, BASE_URL)
    with ServedApp(make_app(data, storage)) as server:
        yield server, storage


def test_served_link_works_over_the_wire(served: tuple[ServedApp, LocalStorage]) -> None:
    server, storage = served
    exp = int(time.time()) + 60
    key = "generations/u/ok.png"
    status, media_type, body = server.raw_get(f"/files/{key}?{signed_query(storage, key, exp)}")
    assert (status, media_type, body) == (200, "image/png", PNG)


TRICKS = [
    # (request path after /files/, the key the route sees once the server has decoded it)
    ("../secret.txt", "../secret.txt"),
    ("../../secret.txt", "../../secret.txt"),
    ("generations/../../secret.txt", "generations/../../secret.txt"),
    ("%2e%2e/secret.txt", "../secret.txt"),
    ("%2E%2E/%2e%2e/secret.txt", "../../secret.txt"),
    ("..%2fsecret.txt", "../secret.txt"),
    ("%2e%2e%2f%2e%2e%2fsecret.txt", "../../secret.txt"),
    ("../objects-private/x.png", "../objects-private/x.png"),
    ("..\\secret.txt", "..\\secret.txt"),
    ("..%5csecret.txt", "..\\secret.txt"),
    ("%252e%252e/secret.txt", "%2e%2e/secret.txt"),
    ("generations/u/ok.png%00", "generations/u/ok.png\x00"),
]


@pytest.mark.parametrize(("path", "key"), TRICKS)
def test_path_tricks_never_serve_a_file_outside_the_root(
    served: tuple[ServedApp, LocalStorage], path: str, key: str
) -> None:
    server, storage = served
    # Signed correctly, so only the key and path checks stand between the trick and the file.
    status, media_type, body = server.raw_get(
        f"/files/{path}?{signed_query(storage, key, int(time.time()) + 60)}"
    )
    assert (status, media_type) == (404, PROBLEM_JSON), body
    assert SECRET_TEXT not in body


def test_absolute_paths_are_refused(
    served: tuple[ServedApp, LocalStorage], tmp_path_factory: pytest.TempPathFactory
) -> None:
    server, storage = served
    secret_file = next(tmp_path_factory.getbasetemp().glob("served*/secret.txt"))
    absolute = str(secret_file)  # "/tmp/.../secret.txt": the route sees "/tmp/..."
    exp = int(time.time()) + 60
    for path in (absolute, absolute.replace("/", "%2f")):
        status, media_type, body = server.raw_get(
            f"/files/{path}?{signed_query(storage, absolute, exp)}"
        )
        assert (status, media_type) == (404, PROBLEM_JSON), path
        assert SECRET_TEXT not in body


async def test_symlink_out_of_the_root_is_not_followed(
    tmp_path: Path, storage: LocalStorage, files_client: httpx.AsyncClient
) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(SECRET_TEXT)
    link = storage.root / "generations" / "user_1" / "link.png"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    key = "generations/user_1/link.png"

    with pytest.raises(ValueError):
        await storage.get(key)
    response = await files_client.get(storage.url(key, expires_in=60))
    assert_problem(response, 404)
    assert SECRET_TEXT not in response.content
