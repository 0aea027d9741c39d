"""The R2 adapter as any S3-compatible store, by settings alone (R2_ENDPOINT, R2_REGION,
R2_ADDRESSING_STYLE): path-style against moto's S3 server over real HTTP, a Supabase-shaped
endpoint (a path prefix, a bucket named `Images`, a real region), and virtual-host
addressing as AWS S3 prefers it."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from app.config import Settings
from app.services.storage.factory import build_storage
from app.services.storage.r2 import R2Storage
from tests.fakes.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, FakeS3
from tests.fakes.s3_gateway import PrefixedS3

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(1024)
KEY = "generations/0b7c-job.png"

MakeStore = Callable[..., R2Storage]


@pytest.fixture(scope="module")
def s3() -> Iterator[FakeS3]:
    with FakeS3() as server:
        yield server


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[MakeStore]:
    """The store build_storage makes from these settings (closed after the test)."""
    made: list[R2Storage] = []

    def make(**changes: Any) -> R2Storage:
        fields: dict[str, Any] = {
            "env": "test",
            "data_dir": tmp_path,
            "storage": "r2",
            "r2_access_key_id": ACCESS_KEY_ID,
            "r2_secret_access_key": SECRET_ACCESS_KEY,
            "storage_timeout_seconds": 5.0,
        }
        fields.update(changes)
        storage = build_storage(Settings(_env_file=None, **fields))
        assert isinstance(storage, R2Storage)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        await storage.aclose()


def sent_requests(store: R2Storage) -> list[Any]:
    sent: list[Any] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(request)

    store.client.meta.events.register("before-send.s3", record)
    return sent


def credential_region(url_or_header: str) -> str:
    """The region of a SigV4 credential scope (`<key>/<date>/<region>/s3/aws4_request`)."""
    scope = unquote(url_or_header).split("Credential=")[1].split(",")[0].split("&")[0]
    return scope.split("/")[2]


async def round_trip(store: R2Storage) -> None:
    await store.put(KEY, PNG, "image/png")
    assert await store.exists(KEY)
    assert await store.get(KEY) == PNG
    url = store.url(KEY, expires_in=120)
    async with httpx.AsyncClient() as http:
        fetched = await http.get(url)
    assert fetched.status_code == 200 and fetched.content == PNG
    await store.delete(KEY)
    assert not await store.exists(KEY)


async def test_path_style_addressing_against_moto_puts_the_bucket_in_the_path(
    make_store: MakeStore, s3: FakeS3
) -> None:
    bucket = s3.create_bucket()
    store = make_store(
        r2_endpoint=s3.endpoint,
        r2_bucket_name=bucket,
        r2_region="us-east-1",
        r2_addressing_style="path",
    )
    sent = sent_requests(store)

    await round_trip(store)

    assert store.client.meta.config.s3["addressing_style"] == "path"
    endpoint = urlsplit(s3.endpoint)
    assert len(sent) == 5  # put, head, get, delete, head
    for request in sent:
        url = urlsplit(request.url)
        assert url.netloc == endpoint.netloc  # never bucket.host
        assert url.path == f"/{bucket}/{KEY}"
        assert credential_region(request.headers["Authorization"].decode()) == "us-east-1"
    assert s3.keys(bucket) == []


async def test_a_supabase_shaped_endpoint_with_a_path_prefix_and_an_uppercase_bucket(
    make_store: MakeStore, s3: FakeS3
) -> None:
    """Supabase Storage's S3 endpoint lives under /storage/v1/s3 of the project's URL, is
    addressed path-style, signs for the project's region, and the seed platforms' bucket is
    called `Images` (not a valid host name: only path style can address it)."""
    bucket = s3.create_bucket(f"Images-{uuid.uuid4().hex[:8]}")
    with PrefixedS3(s3.endpoint) as gateway:
        store = make_store(
            r2_endpoint=gateway.endpoint,
            r2_bucket_name=bucket,
            r2_region="eu-central-1",
            r2_addressing_style="path",
        )
        await round_trip(store)
        url = store.url(KEY, expires_in=60)

    assert gateway.paths and all(
        p.startswith(f"/storage/v1/s3/{bucket}/{KEY}") for p in gateway.paths
    )
    assert urlsplit(url).path == f"/storage/v1/s3/{bucket}/{KEY}"
    assert credential_region(url) == "eu-central-1"


def test_virtual_addressing_puts_the_bucket_in_the_host_as_aws_prefers(
    make_store: MakeStore,
) -> None:
    store = make_store(
        r2_endpoint="https://s3.eu-west-3.amazonaws.com",
        r2_bucket_name="atelier-icons",
        r2_region="eu-west-3",
        r2_addressing_style="virtual",
    )

    url = urlsplit(
        store.client.generate_presigned_url(
            "get_object", Params={"Bucket": "atelier-icons", "Key": KEY}, ExpiresIn=60
        )
    )

    assert url.netloc == "atelier-icons.s3.eu-west-3.amazonaws.com"
    assert url.path == f"/{KEY}"
    assert credential_region(url.query) == "eu-west-3"
    assert parse_qs(url.query)["X-Amz-Expires"] == ["60"]


def test_path_addressing_is_the_default_and_r2_settings_keep_working(
    make_store: MakeStore,
) -> None:
    settings = Settings(_env_file=None)
    assert (settings.r2_addressing_style, settings.r2_region) == ("path", "auto")
    store = make_store(
        r2_endpoint="https://0123abcd.r2.cloudflarestorage.com", r2_bucket_name="atelier"
    )

    url = urlsplit(
        store.client.generate_presigned_url(
            "get_object", Params={"Bucket": "atelier", "Key": KEY}, ExpiresIn=60
        )
    )

    assert url.netloc == "0123abcd.r2.cloudflarestorage.com"
    assert url.path == f"/atelier/{KEY}"
    assert credential_region(url.query) == "auto"


def test_an_unknown_addressing_style_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="r2_addressing_style"):
        Settings(_env_file=None, r2_addressing_style="sideways")
