"""deploy/nginx.conf agrees with the limits the app enforces behind it."""

from __future__ import annotations

import re
from pathlib import Path

from app.config import Settings
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


def test_the_proxy_lets_an_idle_connection_go_before_the_app_does() -> None:
    text = NGINX_CONF.read_text()
    upstream = re.search(r"^upstream atelier \{(.*?)^\}", text, re.MULTILINE | re.DOTALL)
    assert upstream, "deploy/nginx.conf has no upstream atelier"
    match = re.search(r"^\s*keepalive_timeout\s+(\d+)s;", upstream.group(1), re.MULTILINE)
    assert match, "the upstream sets no keepalive_timeout (nginx's default is 60 s)"
    app_keeps = Settings.model_fields["http_keep_alive_seconds"].default
    assert int(match.group(1)) < app_keeps
