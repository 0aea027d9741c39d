"""A webhook receiver on loopback: a real HTTP server recording every POST it gets, answering
with the statuses it is told (200 once they run out)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response

from tests.support.live import ServedApp


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    def __init__(self, *statuses: int) -> None:
        self.received: list[Received] = []
        self._statuses = list(statuses)
        self._lock = threading.Lock()
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self._lock:
                self.received.append(Received(dict(request.headers), body))
                status = self._statuses.pop(0) if self._statuses else 200
            return Response(status_code=status)

        self._served = ServedApp(app)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._served.port}/hook"

    def __enter__(self) -> WebhookReceiver:
        self._served.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._served.__exit__(None, None, None)
