"""R2 storage against moto's S3 server on loopback: real boto3 requests over real HTTP."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest

from app.config import Settings
from app.services.storage.base import ObjectNotFound, StorageError
from app.services.storage.factory import build_storage
from app.services.storage.r2 import R2Storage
from tests.fakes.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, FakeS3, SilentEndpoint

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2048)
KEY = "generations/user_1/job_1.png"

MakeR2 = Callable[..., R2Storage]


@pytest.fixture(scope="module")
def s3() -> Iterator[FakeS3]:
    with FakeS3() as server:
        yield server


@pytest.fixture
def bucket(s3: FakeS3) -> str:
    return s3.create_bucket()


@pytest.fixture
async def make_r2(tmp_path: Path) -> AsyncIterator[MakeR2]:
    """R2Storage as build_storage makes it from settings (closed after the test)."""
    made: list[R2Storage] = []

    def make(**changes: Any) -> R2Storage:
        fields: dict[str, Any] = {
            "env": "test",
            "data_dir": tmp_path,
            "storage": "r2",
            "r2_access_key_id": ACCESS_KEY_ID,
            "r2_secret_access_key": SECRET_ACCESS_KEY,
            "r2_region": "auto",
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


@pytest.fixture
def r2(make_r2: MakeR2, s3: FakeS3, bucket: str) -> R2Storage:
    return make_r2(r2_endpoint=s3.endpoint, r2_bucket_name=bucket)


def capture_requests(client: Any, operation: str | None = None) -> list[Any]:
    """Every request the client really sends (for `operation`, or any), just before it goes."""
    sent: list[Any] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(request)

    event = f"before-send.s3.{operation}" if operation else "before-send.s3"
    client.meta.events.register(event, record)
    return sent


def checksum_headers(request: Any) -> dict[str, str]:
    found = {}
    for name, value in request.headers.items():
        text = value.decode() if isinstance(value, bytes) else str(value)
        lowered = name.lower()
        if lowered.startswith(("x-amz-checksum-", "x-amz-sdk-checksum")) or lowered in (
            "x-amz-trailer",
            "x-amz-decoded-content-length",
            "content-md5",
        ):
            found[lowered] = text
        elif lowered == "content-encoding" and "aws-chunked" in text:
            found[lowered] = text
        elif lowered == "x-amz-content-sha256" and text.startswith("STREAMING-"):
            found[lowered] = text
    return found


async def test_put_get_exists_delete_round_trip(r2: R2Storage, s3: FakeS3, bucket: str) -> None:
    await r2.put(KEY, PNG, "image/png")

    assert s3.read(bucket, KEY) == (PNG, "image/png")
    assert await r2.get(KEY) == PNG
    assert await r2.exists(KEY)
    await r2.delete(KEY)
    assert not await r2.exists(KEY)
    assert s3.keys(bucket) == []
    await r2.delete(KEY)  # deleting what is gone is no error


async def test_missing_key_raises_object_not_found(r2: R2Storage) -> None:
    with pytest.raises(ObjectNotFound):
        await r2.get("generations/user_1/never-stored.png")
    assert not await r2.exists("generations/user_1/never-stored.png")


async def test_missing_bucket_is_a_storage_error_not_a_missing_object(
    make_r2: MakeR2, s3: FakeS3
) -> None:
    storage = make_r2(r2_endpoint=s3.endpoint, r2_bucket_name="atelier-no-such-bucket")

    with pytest.raises(StorageError) as caught:
        await storage.get(KEY)
    assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(StorageError):
        await storage.put(KEY, PNG, "image/png")


async def test_presigned_url_serves_the_bytes(r2: R2Storage, s3: FakeS3, bucket: str) -> None:
    await r2.put(KEY, PNG, "image/png")

    url = r2.url(KEY, expires_in=300)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}" == s3.endpoint
    assert parts.path == f"/{bucket}/{KEY}"
    # Signed for half as long again, so the same URL is handed out for a while.
    assert query["X-Amz-Expires"] == ["450"]
    assert r2.url(KEY, expires_in=300) == url
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Signature"]
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


async def test_public_base_url_gives_a_plain_public_url(
    make_r2: MakeR2, s3: FakeS3, bucket: str
) -> None:
    storage = make_r2(
        r2_endpoint=s3.endpoint,
        r2_bucket_name=bucket,
        r2_public_base_url="https://images.atelier.test/",
    )

    assert storage.url(KEY, expires_in=300) == f"https://images.atelier.test/{KEY}"


async def test_put_sends_no_checksum_and_no_aws_chunked_body(
    r2: R2Storage, s3: FakeS3, bucket: str
) -> None:
    sent = capture_requests(r2.client, "PutObject")

    await r2.put(KEY, PNG, "image/png")

    assert len(sent) == 1
    assert checksum_headers(sent[0]) == {}
    assert sent[0].headers["Content-Length"] == str(len(PNG))
    assert s3.read(bucket, KEY)[0] == PNG


async def test_default_boto3_client_would_send_a_checksum(s3: FakeS3, bucket: str) -> None:
    """The control for the test above: the same check sees what R2 refuses when botocore
    is left at its defaults (checksums `when_supported`)."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="auto",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )
    try:
        sent = capture_requests(client, "PutObject")
        await asyncio.to_thread(client.put_object, Bucket=bucket, Key=KEY, Body=PNG)
    finally:
        client.close()
    assert checksum_headers(sent[0]) != {}


async def test_stopped_store_raises_storage_error(make_r2: MakeR2) -> None:
    with FakeS3() as other:
        storage = make_r2(r2_endpoint=other.endpoint, r2_bucket_name=other.create_bucket())
        await storage.put(KEY, PNG, "image/png")
        assert await storage.exists(KEY)

    for call in (
        storage.put(KEY, PNG, "image/png"),
        storage.get(KEY),
        storage.exists(KEY),
        storage.delete(KEY),
    ):
        with pytest.raises(StorageError) as caught:
            await call
        assert not isinstance(caught.value, ObjectNotFound)
        assert isinstance(caught.value.__cause__, botocore.exceptions.EndpointConnectionError)


async def test_store_that_never_answers_times_out_as_storage_error(make_r2: MakeR2) -> None:
    with SilentEndpoint() as silent:
        storage = make_r2(
            r2_endpoint=silent.endpoint, r2_bucket_name="atelier", storage_timeout_seconds=0.3
        )
        assert storage.client.meta.config.read_timeout == 0.3
        for call in (storage.get(KEY), storage.put(KEY, PNG, "image/png")):
            # A guard against hanging, far above the 0.3 s timeout (botocore's default is 60 s).
            async with asyncio.timeout(30):
                with pytest.raises(StorageError) as caught:
                    await call
            assert isinstance(caught.value.__cause__, botocore.exceptions.ReadTimeoutError)


@pytest.mark.parametrize("key", ["../escape.png", "/abs.png", "a//b.png", "a\\b.png", ""])
async def test_bad_keys_raise_value_error_before_any_request(r2: R2Storage, key: str) -> None:
    sent = capture_requests(r2.client)

    for call in (r2.put(key, PNG, "image/png"), r2.get(key), r2.exists(key), r2.delete(key)):
        with pytest.raises(ValueError):
            await call
    with pytest.raises(ValueError):
        r2.url(key, expires_in=60)
    assert sent == []


def test_client_is_configured_for_r2(make_r2: MakeR2, s3: FakeS3, bucket: str) -> None:
    config = make_r2(r2_endpoint=s3.endpoint, r2_bucket_name=bucket).client.meta.config

    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.signature_version == "s3v4"
    assert (config.connect_timeout, config.read_timeout) == (5.0, 5.0)
    assert config.retries["total_max_attempts"] == 2  # one retry


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ({"r2_endpoint": None}, "R2_ENDPOINT"),
        ({"r2_bucket_name": None}, "R2_BUCKET_NAME"),
        ({"r2_access_key_id": None}, "R2_ACCESS_KEY_ID"),
        ({"r2_secret_access_key": ""}, "R2_SECRET_ACCESS_KEY"),
    ],
)
def test_factory_names_missing_r2_settings(
    tmp_path: Path, missing: dict[str, object], named: str
) -> None:
    fields: dict[str, Any] = {
        "env": "test",
        "data_dir": tmp_path,
        "storage": "r2",
        "r2_endpoint": "http://127.0.0.1:9",
        "r2_bucket_name": "atelier",
        "r2_access_key_id": ACCESS_KEY_ID,
        "r2_secret_access_key": SECRET_ACCESS_KEY,
    }
    fields.update(missing)

    with pytest.raises(ValueError, match=named):
        build_storage(Settings(_env_file=None, **fields))
