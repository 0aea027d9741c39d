"""Reading text/event-stream responses in tests and benchmarks: a line-fed parser of
server-sent events, and a bare-socket client cheap enough to hold a thousand of."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseEvent:
    event: str | None
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class SseParser:
    """Feed it lines of a text/event-stream; it returns each event as it completes."""

    def __init__(self) -> None:
        self._fields: dict[str, list[str]] = {}

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._fields:
                return None
            fields, self._fields = self._fields, {}
            return SseEvent(
                event=fields.get("event", [None])[-1],
                data="\n".join(fields.get("data", [])),
                id=fields.get("id", [None])[-1],
            )
        if line.startswith(":"):
            return None  # a comment (keep-alive ping)
        name, _, value = line.partition(":")
        self._fields.setdefault(name, []).append(value.removeprefix(" "))
        return None


class RawSseClient:
    """One SSE stream on a plain socket (HTTP/1.1, no client library): cheap enough to hold
    a thousand of them in one process."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = b""  # everything read so far, headers included
        self._seen = 0  # where the next read_until starts looking

    @classmethod
    async def open(cls, port: int, token: str, path: str = "/v1/feed/events") -> RawSseClient:
        """Connect, send the request and wait for the stream's `ready` event."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: atelier.test\r\n"
                f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        client = cls(reader, writer)
        await client.read_until(b"event: ready")
        if not client.received.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"not a stream: {client.received[:300]!r}")
        return client

    async def read_until(self, marker: bytes) -> float:
        """Read until `marker` arrives after the previous one; returns time.perf_counter()
        at its arrival."""
        while (found := self.received.find(marker, self._seen)) < 0:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise AssertionError(f"closed before {marker!r}: {self.received[-300:]!r}")
            self.received += chunk
        arrived = time.perf_counter()
        self._seen = found + len(marker)
        return arrived

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
