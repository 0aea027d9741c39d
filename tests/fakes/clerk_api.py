"""A loopback stand-in for Clerk's Backend API: `GET /v1/users/{user_id}`.

It checks `Authorization: Bearer <secret key>` and answers with Clerk's user shape
(`primary_email_address_id` pointing into `email_addresses`), or Clerk's error shape.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.fakes.jwks import LoopbackServer

SECRET_KEY = "sk_test_atelier_fake"


class ClerkApiServer:
    """Knows the users added with `add_user`; records every request it receives."""

    def __init__(self, secret_key: str = SECRET_KEY) -> None:
        self.secret_key = secret_key
        self._lock = threading.Lock()
        self._users: dict[str, list[str]] = {}
        self._requests: list[tuple[str, str | None]] = []
        self._status: int | None = None
        self._delay = 0.0
        self._in_flight = 0
        self.max_in_flight = 0  # the most requests it was answering at one time
        self._server = LoopbackServer(self._respond)

    @property
    def url(self) -> str:
        """What CLERK_API_URL is set to (Clerk's is https://api.clerk.com/v1)."""
        return self._server.origin + "/v1"

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        """(path, Authorization header) of every request so far."""
        with self._lock:
            return list(self._requests)

    def add_user(self, user_id: str, primary_email: str, *other_emails: str) -> None:
        with self._lock:
            self._users[user_id] = [primary_email, *other_emails]

    def fail_with(self, status: int | None) -> None:
        """Answer every request with this status (None: behave again)."""
        with self._lock:
            self._status = status

    def answer_after(self, seconds: float) -> None:
        """Take this long over every answer (Clerk's latency, as a caller sees it)."""
        with self._lock:
            self._delay = seconds

    def stop(self) -> None:
        self._server.stop()

    def _respond(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            delay = self._delay
        try:
            if delay:
                time.sleep(delay)  # a handler thread of its own: others are answered meanwhile
            return self._answer(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        authorization = request.headers.get("Authorization")
        path = urlsplit(request.path).path
        with self._lock:
            self._requests.append((path, authorization))
            status = self._status
            prefix = "/v1/users/"
            emails = (
                self._users.get(unquote(path[len(prefix) :])) if path.startswith(prefix) else None
            )
        if status is not None:
            return status, _error("internal_clerk_error", "Something went wrong")
        if authorization != f"Bearer {self.secret_key}":
            return 401, _error("authentication_invalid", "Invalid authentication")
        if emails is None:
            return 404, _error("resource_not_found", "Resource not found")
        user_id = unquote(path[len(prefix) :])
        # The primary address is deliberately not the first one listed.
        addresses = [
            {"id": f"idn_other_{i}", "object": "email_address", "email_address": email}
            for i, email in enumerate(emails[1:])
        ]
        addresses.append({"id": "idn_1", "object": "email_address", "email_address": emails[0]})
        return 200, {
            "id": user_id,
            "object": "user",
            "primary_email_address_id": "idn_1",
            "email_addresses": addresses,
            "first_name": None,
            "last_name": None,
        }

    def __enter__(self) -> ClerkApiServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "long_message": message}]}
