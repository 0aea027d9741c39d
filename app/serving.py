"""The HTTP protocol `atelier serve` runs: uvicorn's httptools protocol with a header limit.

httptools (llhttp) sets no limit on the size of a request's head, and uvicorn sets none for
it either (its `h11_max_incomplete_event_size` applies to the h11 protocol only): a client
could send a 50 MB `Authorization` header and the server would buffer all of it before the
app could refuse it. This protocol counts the bytes of each request's head as they arrive
and answers 431 and closes the connection once they pass `max_head_bytes`, without reading
the rest. A proxy in front should refuse such requests first (see deploy/nginx.conf).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import HeadersTooLarge


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose head is too large."""


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol refusing a request head (request line and headers) over the limit.

    Bytes are counted per read while a head is incomplete, so a head still incomplete past
    the limit is refused after the read that crossed it; a head that completes within a read
    is measured from what the parser collected (the URL and the header lines).
    """

    max_head_bytes = 32 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # the next bytes belong to a request's head
        self._head_bytes = 0
        self._head_refused = False

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes and not self._closing():
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_head_bytes:
            self._head_refused = True
            raise _HeadTooLarge  # the parser stops; uvicorn calls send_400_response
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _closing(self) -> bool:
        return self._head_refused or self.transport.is_closing()

    def send_400_response(self, msg: str) -> None:
        if self._head_refused:
            self._write_431()
            return
        super().send_400_response(msg)

    def _refuse_head(self) -> None:
        self._head_refused = True
        self._write_431()

    def _write_431(self) -> None:
        problem = HeadersTooLarge.over(self.max_head_bytes).to_problem()
        body = json.dumps(problem).encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "content-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.logger.warning("Refused a request whose head is over %d bytes.", self.max_head_bytes)
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


def http_protocol(max_head_bytes: int) -> type[HeadLimitedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=`, with this limit."""
    return type(
        "HeadLimitedHttpToolsProtocol",
        (HeadLimitedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes},
    )
