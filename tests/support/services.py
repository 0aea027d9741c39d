"""Tests that need something a fresh machine lacks (Redis, PgBouncer, Node, Chromium).

Under the README's test command such a test skips and says why. `.ci/run` sets
`ATELIER_REQUIRE_SERVICES=1` after installing and starting what they need; there a missing
service fails the test instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import socket

import pytest

STRICT_ENV = "ATELIER_REQUIRE_SERVICES"


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in {"", "0", "false"}


def require(available: bool, reason: str) -> None:
    """Skip the calling test with `reason` when `available` is false (fail under CI)."""
    if available:
        return
    if strict():
        pytest.fail(f"{reason} ({STRICT_ENV} is set, so this may not be skipped)")
    pytest.skip(reason)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
