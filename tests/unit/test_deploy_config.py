"""deploy/nginx.conf agrees with the limits the app enforces behind it."""

from __future__ import annotations

import re
from pathlib import Path

from app.services.auth import MAX_TOKEN_LENGTH

NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"


def _size(value: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024 * 1024}
    match = re.fullmatch(r"(\d+)([km]?)", value.lower())
    assert match, value
    return int(match.group(1)) * units[match.group(2)]


def test_the_proxy_passes_the_longest_accepted_token_and_bounds_every_head() -> None:
    text = NGINX_CONF.read_text()
    match = re.search(r"^large_client_header_buffers\s+(\d+)\s+(\w+);", text, re.MULTILINE)
    assert match, "deploy/nginx.conf sets no large_client_header_buffers"
    count, size = int(match.group(1)), _size(match.group(2))
    longest_line = len("Authorization: Bearer \r\n") + MAX_TOKEN_LENGTH
    assert size >= longest_line  # a token the app would accept is never cut off by the proxy
    assert count * size <= 64 * 1024  # and what the proxy buffers per request stays small
