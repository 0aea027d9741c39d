"""An S3 API on loopback (moto's server) and an endpoint that never answers.

`FakeS3` runs moto's `ThreadedMotoServer` on 127.0.0.1 on a free port: real HTTP, real S3
wire protocol, so boto3 (and R2Storage) talk to it exactly as to R2. moto keeps its buckets
in process-wide state, so two servers in one process see the same buckets: name buckets
uniquely (`create_bucket()` does). `stop()` closes the listening socket, after which
connections to the endpoint are refused, as with a store that is down.

`SilentEndpoint` is a socket that accepts connections (the kernel's backlog does) and never
sends a byte, like a store that hangs: a client without a read timeout would wait forever.
"""

from __future__ import annotations

import logging
import socket
import uuid
from types import TracebackType
from typing import Any

import boto3
import botocore.config
from moto.server import ThreadedMotoServer

ACCESS_KEY_ID = "fake-access-key-id"
SECRET_ACCESS_KEY = "fake-secret-access-key"
REGION = "us-east-1"


class FakeS3:
    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._running = False
        self._client: Any = None

    def start(self) -> FakeS3:
        # werkzeug logs every request at INFO (and adds its own stderr handler to do so).
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server.start()
        self._running = True
        return self

    def stop(self) -> None:
        """Stop serving and close the socket: later connections are refused."""
        if self._running:
            self._running = False
            self._server.stop()
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    @property
    def client(self) -> Any:
        """A plain boto3 client of the test's own, to set up and inspect buckets."""
        if self._client is None:
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY_ID,
                aws_secret_access_key=SECRET_ACCESS_KEY,
                config=botocore.config.Config(s3={"addressing_style": "path"}),
            )
        return self._client

    def create_bucket(self, name: str | None = None) -> str:
        bucket = name or f"atelier-test-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=bucket)
        return bucket

    def read(self, bucket: str, key: str) -> tuple[bytes, str]:
        """An object's bytes and content type, read straight from the server."""
        found = self.client.get_object(Bucket=bucket, Key=key)
        return found["Body"].read(), str(found["ContentType"])

    def keys(self, bucket: str) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listed.get("Contents", [])]

    def __enter__(self) -> FakeS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SilentEndpoint:
    """A listening TCP socket on 127.0.0.1 that never accepts, reads or answers."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)

    @property
    def endpoint(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SilentEndpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
