"""A loopback stand-in for fal's queue API, spoken over TLS to the real `fal-client`.

fal-client reads `FAL_RUN_HOST`/`FAL_QUEUE_RUN_HOST` once, when it is imported, and builds
`https://{host}/` from them; so `queue_host()` reserves a listening socket on 127.0.0.1 the
first time it is called, and tests/conftest.py puts its address in both variables before
anything imports the app (and with it fal-client). Every `FakeFal` serves on that socket;
the client trusts it through SSL_CERT_FILE (tests/fakes/tls.py).

The protocol, as fal's queue answers it:
- `POST /{owner}/{alias}[/{path}]` (the endpoint id), `Authorization: Key <FAL_KEY>`, the
  arguments as JSON → `{request_id, response_url, status_url, cancel_url, queue_position}`;
- `GET .../requests/{id}/status?logs=1` → `{"status": "IN_QUEUE", "queue_position"}`, then
  `IN_PROGRESS` with `logs` ("50%" ...), then `COMPLETED` with `logs` and `metrics`;
- `GET .../requests/{id}` → the result: `{"images": [{url, content_type, width, height}],
  "has_nsfw_concepts": [false], "seed", "prompt", "timings"}`;
- `PUT .../requests/{id}/cancel` → 202 `{"status": "CANCELLATION_REQUESTED"}`;
- `GET /files/{id}.png` → the image (what the result's URL points at).
Errors are `{"detail": ...}` with the status, as fal sends them.

    with FakeFal() as fal:
        fal.script("submit", rate_limited())        # one reply per request, in order
        fal.script("result", nsfw_result())
        fal.statuses = ["IN_QUEUE", "IN_PROGRESS:40", "COMPLETED"]   # per request
        fal.calls, fal.cancelled, fal.submitted
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from tests.fakes.tls import TlsServer, listening_socket

KEY = "test-fal-key"
TEXT_TO_IMAGE = "fal-ai/flux/dev"
IMAGE_TO_IMAGE = "fal-ai/flux-pro/kontext"

_reserved: socket.socket | None = None
_reserve_lock = threading.Lock()


def queue_host() -> str:
    """`127.0.0.1:<port>` of this process's reserved socket (reserved on the first call)."""
    global _reserved
    with _reserve_lock:
        if _reserved is None:
            _reserved = listening_socket()
        host, port = _reserved.getsockname()[:2]
    return f"{host}:{port}"


def png_for_prompt(prompt: str, size: int = 48) -> bytes:
    digest = hashlib.sha256(b"fal:" + prompt.encode()).digest()
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (digest[0], digest[1], digest[2])).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # JSON; None: the default answer
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is instead of JSON


def rate_limited(retry_after: str | None = "0") -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(429, {"detail": "Too many requests, please slow down."}, headers)


def server_error(code: int = 500) -> Reply:
    return Reply(code, {"detail": "Internal server error"}, {"x-fal-request-id": "fake"})


def content_policy() -> Reply:
    """The 422 fal answers when its content checker refuses the prompt or the image."""
    return Reply(
        422,
        {
            "detail": [
                {
                    "loc": ["body", "prompt"],
                    "msg": "The content could not be processed because it contained "
                    "material flagged by a content checker.",
                    "type": "content_policy_violation",
                    "ctx": {"extra_info": "prompt"},
                }
            ]
        },
        {"x-fal-error-type": "content_policy_violation"},
    )


def nsfw_result() -> Reply:
    """A completed result whose only image the safety checker flagged (fal blacks it out)."""
    image = {"url": "https://v3.fal.media/files/black.png", "content_type": "image/png"}
    return Reply(200, {"images": [image], "has_nsfw_concepts": [True], "seed": 7})


def empty_result() -> Reply:
    return Reply(200, {"images": [], "has_nsfw_concepts": [], "seed": 7, "prompt": "x"})


def malformed_result() -> Reply:
    return Reply(200, {"image": "not-the-shape-fal-answers", "seed": 7})


@dataclass(frozen=True)
class FalCall:
    method: str
    path: str
    authorization: str | None
    body: Any


@dataclass
class _Request:
    id: str
    app: str  # owner/alias
    endpoint: str  # the full endpoint id submitted to
    arguments: dict[str, Any]
    statuses: deque[str]
    cancelled: bool = False


class FakeFal:
    def __init__(self, key: str | None = KEY) -> None:
        self.key = key
        self.statuses: list[str] = ["IN_QUEUE", "IN_PROGRESS:50", "COMPLETED"]
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Reply]] = {}
        self._requests: dict[str, _Request] = {}
        self._calls: list[FalCall] = []
        self._files: dict[str, bytes] = {}
        self._server: TlsServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def __enter__(self) -> FakeFal:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                reply = fake._handle(self, raw)
                data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    content_type = "image/png" if reply.raw is not None else "application/json"
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = _serve  # noqa: N815 (the http.server API)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        queue_host()
        assert _reserved is not None
        self._server = TlsServer(Handler, _reserved)
        self._thread = self._server.serve_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.base_url

    # -- scripting and inspection

    def script(self, step: str, *replies: Reply) -> None:
        """Queue replies for a step: "submit", "status", "result", "cancel" or "file"."""
        with self._lock:
            self._scripts.setdefault(step, deque()).extend(replies)

    def set_default(self, step: str, reply: Reply) -> None:
        """Answer `step` with `reply` from now on (a reply that never runs out)."""
        with self._lock:
            self._scripts[step] = _Forever(reply)

    @property
    def calls(self) -> list[FalCall]:
        with self._lock:
            return list(self._calls)

    @property
    def submitted(self) -> list[tuple[str, dict[str, Any]]]:
        """(endpoint id, arguments) of every accepted submission, in order."""
        with self._lock:
            return [(r.endpoint, r.arguments) for r in self._requests.values()]

    @property
    def cancelled(self) -> list[str]:
        with self._lock:
            return [r.id for r in self._requests.values() if r.cancelled]

    # -- answering

    def _scripted(self, step: str) -> Reply | None:
        with self._lock:
            queue = self._scripts.get(step)
            return queue.popleft() if queue else None

    def _handle(self, request: BaseHTTPRequestHandler, raw: bytes) -> Reply:
        path = urlsplit(request.path).path
        auth = request.headers.get("Authorization")
        body = json.loads(raw) if raw else None
        with self._lock:
            self._calls.append(FalCall(request.command, path, auth, body))
        if request.command == "GET" and path.startswith("/files/"):
            return self._scripted("file") or self._file(path.removeprefix("/files/"))
        if self.key is not None and auth != f"Key {self.key}":
            return Reply(401, {"detail": "No user found for Key ID and Secret"})
        match = re.match(r"^/([^/]+/[^/]+)/requests/([^/]+)(/status|/cancel)?$", path)
        if match is None and request.command == "POST":
            return self._submit(path.strip("/"), body or {})
        if match is None:
            return Reply(404, {"detail": f"Path {path} not found"})
        app, request_id, tail = match.groups()
        with self._lock:
            queued = self._requests.get(request_id)
        if queued is None or queued.app != app:
            return Reply(404, {"detail": f"Request {request_id} not found"})
        if tail == "/cancel" and request.command == "PUT":
            return self._scripted("cancel") or self._cancel(queued)
        if tail == "/status":
            return self._scripted("status") or self._status(queued)
        return self._scripted("result") or self._result(queued)

    def _submit(self, endpoint: str, arguments: dict[str, Any]) -> Reply:
        scripted = self._scripted("submit")
        if scripted is not None:
            return scripted
        app = "/".join(endpoint.split("/")[:2])
        request_id = str(uuid.uuid4())
        with self._lock:
            self._requests[request_id] = _Request(
                request_id, app, endpoint, arguments, deque(self.statuses)
            )
        base = f"{self.url}/{app}/requests/{request_id}"
        return Reply(
            200,
            {
                "status": "IN_QUEUE",
                "request_id": request_id,
                "response_url": base,
                "status_url": base + "/status",
                "cancel_url": base + "/cancel",
                "queue_position": 0,
            },
            {"x-fal-request-id": request_id},
        )

    def _status(self, queued: _Request) -> Reply:
        with self._lock:
            current = queued.statuses[0]
            if len(queued.statuses) > 1:
                queued.statuses.popleft()
        name, _, percent = current.partition(":")
        base = f"{self.url}/{queued.app}/requests/{queued.id}"
        body: dict[str, Any] = {"status": name, "request_id": queued.id, "response_url": base}
        if name == "IN_QUEUE":
            body["queue_position"] = 0
        else:
            logs = [{"message": "Loading model", "level": "INFO", "timestamp": "t"}]
            if percent:
                logs.append({"message": f"{percent}%|###   | 14/28", "level": "INFO"})
            body["logs"] = logs
        if name == "COMPLETED":
            body["metrics"] = {"inference_time": 1.2}
        return Reply(200, body)

    def _result(self, queued: _Request) -> Reply:
        prompt = str(queued.arguments.get("prompt", ""))
        data = png_for_prompt(prompt)
        with self._lock:
            self._files[f"{queued.id}.png"] = data
        image = {
            "url": f"{self.url}/files/{queued.id}.png",
            "content_type": "image/png",
            "width": 48,
            "height": 48,
        }
        return Reply(
            200,
            {
                "images": [image],
                "has_nsfw_concepts": [False],
                "seed": 42,
                "prompt": prompt,
                "timings": {"inference": 1.2},
            },
        )

    def _cancel(self, queued: _Request) -> Reply:
        with self._lock:
            queued.cancelled = True
        return Reply(202, {"status": "CANCELLATION_REQUESTED"})

    def _file(self, name: str) -> Reply:
        with self._lock:
            data = self._files.get(name)
        if data is None:
            return Reply(404, {"detail": "not found"})
        return Reply(200, raw=data)


class _Forever(deque[Reply]):
    """A script that answers the same reply every time."""

    def __init__(self, reply: Reply) -> None:
        super().__init__([reply])

    def popleft(self) -> Reply:
        return self[0]
