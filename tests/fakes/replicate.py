"""A loopback stand-in for Replicate's predictions API, for the real `replicate` client
(`REPLICATE_BASE_URL` / the client's base_url points at `FakeReplicate.url`). It serves TLS
(tests/fakes/tls.py) because the output URLs it answers with must be https.

The protocol, as Replicate answers it:
- `POST /v1/models/{owner}/{name}/predictions` (an official model) or `POST /v1/predictions`
  with `version`, `Authorization: Bearer <token>`, `{"input": {...}}` → 201 and a prediction:
  `{id, model, version, status: "starting", input, output: null, logs, error, metrics,
  created_at, started_at, completed_at, urls: {get, cancel, stream}}`;
- `GET /v1/predictions/{id}` → the prediction, one step further per poll through `statuses`
  (default starting, processing with a tqdm "50%|..." log line, succeeded with
  `output: ["https://.../files/{id}.png"]`);
- `POST /v1/predictions/{id}/cancel` → the prediction, `canceled`;
- `GET /files/{id}.png` → the image.
Errors are problem details: `{"title", "detail", "status"}`.

    with FakeReplicate() as replicate:
        replicate.script("create", rate_limited())
        replicate.statuses = ["starting", "failed:E005 flagged as sensitive"]
        replicate.output = "a-string-output"     # what `succeeded` carries (None: the URL list)
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from tests.fakes.tls import TlsServer

TOKEN = "r8_test_token"
MODEL = "black-forest-labs/flux-schnell"
IMAGE_TO_IMAGE = "black-forest-labs/flux-kontext-pro"
_UNSET = object()


def png_for_prompt(prompt: str, size: int = 40) -> bytes:
    digest = hashlib.sha256(b"replicate:" + prompt.encode()).digest()
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (digest[0], digest[1], digest[2])).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def problem(status: int, title: str, detail: str) -> Reply:
    return Reply(status, {"title": title, "detail": detail, "status": status})


def rate_limited() -> Reply:
    return problem(429, "Too Many Requests", "Request was throttled. Expected available in 1s.")


def server_error(code: int = 500) -> Reply:
    return problem(code, "Internal Server Error", "Something went wrong")


@dataclass(frozen=True)
class ReplicateCall:
    method: str
    path: str
    authorization: str | None
    body: Any


@dataclass
class _Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    statuses: deque[str]
    status: str = "starting"
    logs: str = ""
    error: str | None = None
    output: Any = None


class FakeReplicate:
    def __init__(self, token: str | None = TOKEN) -> None:
        self.token = token
        self.statuses: list[str] = ["starting", "processing:50", "succeeded"]
        self.output: Any = _UNSET  # what a succeeded prediction carries; unset: [its URL]
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Reply]] = {}
        self._predictions: dict[str, _Prediction] = {}
        self._calls: list[ReplicateCall] = []
        self._files: dict[str, bytes] = {}
        self._server: TlsServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeReplicate:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                reply, data = fake._handle(self, raw)
                try:
                    self.send_response(reply.status)
                    content = "image/png" if data is not None else "application/json"
                    payload = data if data is not None else json.dumps(reply.body).encode()
                    self.send_header("Content-Type", content)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _serve  # noqa: N815 (the http.server API)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = TlsServer(Handler)
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

    def script(self, step: str, *replies: Reply) -> None:
        """Queue replies for a step: "create", "get", "cancel" or "file"."""
        with self._lock:
            self._scripts.setdefault(step, deque()).extend(replies)

    @property
    def calls(self) -> list[ReplicateCall]:
        with self._lock:
            return list(self._calls)

    @property
    def created(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(model, version, input) of every prediction created, in order."""
        with self._lock:
            return [(p.model, p.version, p.input) for p in self._predictions.values()]

    @property
    def cancelled(self) -> list[str]:
        with self._lock:
            return [p.id for p in self._predictions.values() if p.status == "canceled"]

    # -- answering

    def _scripted(self, step: str) -> Reply | None:
        with self._lock:
            queue = self._scripts.get(step)
            return queue.popleft() if queue else None

    def _handle(self, request: BaseHTTPRequestHandler, raw: bytes) -> tuple[Reply, bytes | None]:
        path = urlsplit(request.path).path
        auth = request.headers.get("Authorization")
        body = json.loads(raw) if raw else None
        with self._lock:
            self._calls.append(ReplicateCall(request.command, path, auth, body))
        if request.command == "GET" and path.startswith("/files/"):
            scripted = self._scripted("file")
            if scripted is not None:
                return scripted, None
            with self._lock:
                data = self._files.get(path.removeprefix("/files/"))
            if data is None:
                return problem(404, "Not found", "no such file"), None
            return Reply(200), data
        if self.token is not None and auth != f"Bearer {self.token}":
            return problem(401, "Unauthenticated", "You did not pass a valid token"), None
        if request.command == "POST":
            model_path = re.match(r"^/v1/models/([^/]+/[^/]+)/predictions$", path)
            if model_path or path == "/v1/predictions":
                scripted = self._scripted("create")
                if scripted is not None:
                    return scripted, None
                model = model_path.group(1) if model_path else "owner/by-version"
                version = "" if model_path else str((body or {}).get("version", ""))
                return self._create(model, version, (body or {}).get("input") or {}), None
        found = re.match(r"^/v1/predictions/([^/]+)(/cancel)?$", path)
        if found is None:
            return problem(404, "Not found", f"{path}"), None
        with self._lock:
            prediction = self._predictions.get(found.group(1))
        if prediction is None:
            return problem(404, "Not found", "The requested resource could not be found."), None
        if found.group(2) and request.command == "POST":
            scripted = self._scripted("cancel")
            if scripted is not None:
                return scripted, None
            with self._lock:
                if prediction.status not in ("succeeded", "failed", "canceled"):
                    prediction.status = "canceled"
            return Reply(200, self._json(prediction)), None
        scripted = self._scripted("get")
        if scripted is not None:
            return scripted, None
        self._advance(prediction)
        return Reply(200, self._json(prediction)), None

    def _create(self, model: str, version: str, inputs: dict[str, Any]) -> Reply:
        prediction = _Prediction(
            id=uuid.uuid4().hex[:20], model=model, version=version, input=inputs,
            statuses=deque(self.statuses),
        )  # fmt: skip
        prediction.statuses.popleft()  # the first status is the one it is created in
        with self._lock:
            self._predictions[prediction.id] = prediction
        return Reply(201, self._json(prediction))

    def _advance(self, prediction: _Prediction) -> None:
        with self._lock:
            if prediction.status == "canceled" or not prediction.statuses:
                return
            current = prediction.statuses.popleft()
            if not prediction.statuses and not current.startswith(("succeeded", "failed")):
                prediction.statuses.append(current)  # the last status lasts forever
            name, _, extra = current.partition(":")
            prediction.status = name
            if name == "processing" and extra:
                prediction.logs += f"Generating\n{extra}%|#####     | 2/4 [00:01<00:01]\n"
            if name == "failed":
                prediction.error = extra or "Prediction failed"
            if name == "succeeded":
                if self.output is _UNSET:
                    self._files[f"{prediction.id}.png"] = png_for_prompt(
                        str(prediction.input.get("prompt", ""))
                    )
                    prediction.output = [f"{self.url}/files/{prediction.id}.png"]
                else:
                    prediction.output = self.output

    def _json(self, prediction: _Prediction) -> dict[str, Any]:
        base = f"{self.url}/v1/predictions/{prediction.id}"
        done = prediction.status in ("succeeded", "failed", "canceled")
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version or "hidden",
            "status": prediction.status,
            "input": prediction.input,
            "output": prediction.output,
            "logs": prediction.logs,
            "error": prediction.error,
            "metrics": {"predict_time": 1.1} if done else {},
            "created_at": "2026-11-30T06:00:00.000Z",
            "started_at": "2026-11-30T06:00:00.500Z",
            "completed_at": "2026-11-30T06:00:01.600Z" if done else None,
            "data_removed": False,
            "urls": {"get": base, "cancel": base + "/cancel", "stream": base + "/stream"},
        }
