"""A loopback stand-in for the Gemini API: `POST /{v1,v1beta}/models/{model}:generateContent`.

It is a real HTTP server on 127.0.0.1 that the real google-genai SDK talks to (point
`GEMINI_BASE_URL` at `FakeGemini.url`). It accepts what the SDK really sends: JSON with
`inlineData`/`inline_data`, `mimeType`/`mime_type`, base64 in the standard or the URL-safe
alphabet, the key in `x-goog-api-key` (or `?key=`). It answers in the API's real shapes:
candidates with `inlineData` parts, `promptFeedback.blockReason`, `finishReason`, and errors
as `{"error": {"code", "message", "status", "details": [...]}}` with `RetryInfo`.

    with FakeGemini(models={"gemini-3-pro-image"}) as gemini:   # other models answer 404
        gemini.script("gemini-3-pro-image", rate_limited("7s"), server_error(503))
        ...                                    # then the default: a PNG drawn from the prompt
        gemini.calls                           # every request, as GeminiCall, in order
        gemini.calls_for("gemini-3-pro-image")

`script(model, *replies)` queues replies for one model (`"*"`: any model whose own queue
is empty), used one per request; with nothing queued it answers the reply given to
`set_default(reply)`, or else `png_for_prompt(prompt)` as a real image answer. The key
must be `API_KEY` (`FakeGemini(api_key=None)` takes any), or it answers 400 API_KEY_INVALID
as Google does. The reply builders below (`image_reply`, `not_found`, `rate_limited`,
`server_error`, `bad_request`, `prompt_blocked`, `finished_without_image`, `text_only`,
`slow`) make the bodies. A slow reply waits on a stop signal, so `stop()` never hangs on it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

API_KEY = "test-gemini-key"
_PATH = re.compile(r"^/(v1|v1beta)/models/([^/:]+):generateContent$")


@dataclass(frozen=True)
class InlineImage:
    data: bytes
    mime_type: str


@dataclass(frozen=True)
class GeminiCall:
    """One request as the server understood it."""

    model: str
    api_version: str  # "v1" or "v1beta"
    path: str
    api_key: str | None
    prompt: str  # the text parts, joined by newlines
    images: list[InlineImage]
    response_modalities: list[str] | None
    body: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """What to answer: a status and a JSON body (None: the default PNG for the prompt)."""

    status: int = 200
    body: dict[str, Any] | None = None
    delay_seconds: float = 0.0
    gate: threading.Event | None = None  # answered only once the test sets it


# -- reply builders -------------------------------------------------------------------------


def png_for_prompt(prompt: str, size: int = 64) -> bytes:
    """A real PNG whose solid colour comes from the prompt's hash (what the default answers)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (digest[0], digest[1], digest[2])).save(buffer, "PNG")
    return buffer.getvalue()


def _usage(image: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": 12, "totalTokenCount": 12}
    if image:
        usage.update(
            candidatesTokenCount=1290,
            totalTokenCount=1302,
            promptTokensDetails=[{"modality": "TEXT", "tokenCount": 12}],
            candidatesTokensDetails=[{"modality": "IMAGE", "tokenCount": 1290}],
        )
    return usage


def _answer(candidates: list[dict[str, Any]] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if candidates is not None:
        body["candidates"] = candidates
    body.update(extra)
    body.setdefault("usageMetadata", _usage(image=False))
    body["responseId"] = "fake-response-id"
    return body


def _inline(data: bytes, mime_type: str) -> dict[str, Any]:
    # the API answers in the standard alphabet
    return {"inlineData": {"mimeType": mime_type, "data": base64.b64encode(data).decode()}}


def image_reply(
    data: bytes,
    mime_type: str = "image/png",
    text: str | None = None,
    draft: bytes | None = None,
) -> Reply:
    """200 with one image part; optionally a text part before it (as the models often send),
    and a thinking model's draft: a `thought` text part and a `thought` image part first."""
    parts: list[dict[str, Any]] = []
    if draft is not None:
        parts.append({"text": "**Composing the scene**", "thought": True})
        parts.append({**_inline(draft, mime_type), "thought": True})
    if text is not None:
        parts.append({"text": text})
    parts.append({**_inline(data, mime_type), "thoughtSignature": "c2lnbmF0dXJl"})
    candidate = {
        "content": {"role": "model", "parts": parts},
        "finishReason": "STOP",
        "index": 0,
    }
    return Reply(200, _answer([candidate], usageMetadata=_usage(image=True)))


def error_reply(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return Reply(code, {"error": error})


def not_found(model: str = "the-model") -> Reply:
    return error_reply(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version v1beta, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their "
        "supported methods.",
    )


def rate_limited(retry_delay: str | None = "7s") -> Reply:
    """429 RESOURCE_EXHAUSTED with QuotaFailure, Help and (unless None) RetryInfo details."""
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    "quotaDimensions": {"location": "global", "model": "image"},
                    "quotaValue": "10",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    message = "You exceeded your current quota, please check your plan and billing details."
    if retry_delay is not None:
        message += f" Please retry in {retry_delay}."
    return error_reply(429, "RESOURCE_EXHAUSTED", message, details)


def server_error(code: int = 500) -> Reply:
    statuses = {
        500: ("INTERNAL", "An internal error has occurred. Please retry or report it."),
        503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
        504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
    }
    status, message = statuses.get(code, ("UNKNOWN", "Server error."))
    return error_reply(code, status, message)


def bad_request(message: str = "Unable to process input image.") -> Reply:
    return error_reply(400, "INVALID_ARGUMENT", message)


def prompt_blocked(reason: str = "PROHIBITED_CONTENT") -> Reply:
    """200 without candidates: the prompt itself was blocked."""
    return Reply(200, _answer(None, promptFeedback={"blockReason": reason}))


def finished_without_image(reason: str = "IMAGE_SAFETY", message: str | None = None) -> Reply:
    """200 with a candidate that stopped for `reason` and carries no parts."""
    candidate: dict[str, Any] = {"finishReason": reason, "index": 0}
    if message is not None:
        candidate["finishMessage"] = message
    return Reply(200, _answer([candidate]))


def text_only(text: str = "I can't make that image, but here is a description.") -> Reply:
    candidate = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "finishReason": "STOP",
        "index": 0,
    }
    return Reply(200, _answer([candidate]))


def slow(seconds: float, then: Reply | None = None) -> Reply:
    """`then` (default: the prompt's PNG), answered only after `seconds`."""
    return replace(then or Reply(), delay_seconds=seconds)


def held(gate: threading.Event, then: Reply | None = None) -> Reply:
    """`then` (default: the prompt's PNG), answered only once `gate` is set."""
    return replace(then or Reply(), gate=gate)


# -- the server -----------------------------------------------------------------------------


def _decode_base64(text: str) -> bytes:
    """Both alphabets, with or without padding, as the API accepts them."""
    normalised = text.replace("-", "+").replace("_", "/")
    normalised += "=" * (-len(normalised) % 4)
    return base64.b64decode(normalised, validate=True)


def _parse(body: dict[str, Any]) -> tuple[str, list[InlineImage], list[str] | None]:
    texts: list[str] = []
    images: list[InlineImage] = []
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            if "text" in part:
                texts.append(part["text"])
            inline = part.get("inlineData", part.get("inline_data"))
            if inline is not None:
                mime_type = inline.get("mimeType", inline.get("mime_type"))
                images.append(InlineImage(_decode_base64(inline["data"]), mime_type))
    config = body.get("generationConfig", body.get("generation_config")) or {}
    modalities = config.get("responseModalities", config.get("response_modalities"))
    return "\n".join(texts), images, modalities


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    calls: list[GeminiCall] = field(default_factory=list)
    scripts: dict[str, deque[Reply]] = field(default_factory=dict)


class FakeGemini:
    """The server. `models`: the models that exist (others answer 404); None: all do."""

    def __init__(self, models: set[str] | None = None, api_key: str | None = API_KEY) -> None:
        self.models = models
        self.api_key = api_key
        self._state = _State()
        self._default: Reply | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeGemini:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                length = int(self.headers.get("Content-Length") or 0)
                reply = fake._handle(self, self.rfile.read(length))
                if reply.gate is not None:
                    while not reply.gate.wait(0.05):
                        if fake._state.stopping.is_set():
                            return  # stopping: drop the connection unanswered
                if reply.delay_seconds and fake._state.stopping.wait(reply.delay_seconds):
                    return  # stopping: drop the connection unanswered
                data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout), as a real client does

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None and self._thread is not None:
            self._state.stopping.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """What GEMINI_BASE_URL is set to (the SDK appends `/v1beta/models/...`)."""
        assert self._httpd is not None, "FakeGemini is not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- scripting and inspection

    def script(self, model: str, *replies: Reply) -> None:
        """Queue replies for `model` ("*": whichever model is asked when its own queue is empty)."""
        with self._state.lock:
            self._state.scripts.setdefault(model, deque()).extend(replies)

    def set_default(self, reply: Reply | None) -> None:
        """What every model answers once its queue is empty (None: the prompt's PNG)."""
        with self._state.lock:
            self._default = reply

    @property
    def calls(self) -> list[GeminiCall]:
        with self._state.lock:
            return list(self._state.calls)

    def calls_for(self, model: str) -> list[GeminiCall]:
        return [call for call in self.calls if call.model == model]

    # -- answering

    def _handle(self, request: BaseHTTPRequestHandler, raw: bytes) -> Reply:
        url = urlsplit(request.path)
        match = _PATH.match(url.path)
        if match is None:
            return error_reply(404, "NOT_FOUND", f"Unknown path {url.path}.")
        api_version, model = match.groups()
        api_key = request.headers.get("x-goog-api-key") or parse_qs(url.query).get("key", [None])[0]
        try:
            body = json.loads(raw)
            prompt, images, modalities = _parse(body)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            return bad_request(f"Invalid JSON payload received. {exc}")
        call = GeminiCall(model, api_version, url.path, api_key, prompt, images, modalities, body)
        with self._state.lock:
            self._state.calls.append(call)
        if self.api_key is not None and api_key != self.api_key:
            return error_reply(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        if self.models is not None and model not in self.models:
            return not_found(model)
        with self._state.lock:
            queue = self._state.scripts.get(model) or self._state.scripts.get("*")
            reply = queue.popleft() if queue else (self._default or Reply())
        if reply.body is None:
            reply = replace(image_reply(png_for_prompt(prompt)), delay_seconds=reply.delay_seconds)
        return reply
