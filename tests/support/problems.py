"""What every error answer must look like (RFC 9457 problem+json, never a stack trace)."""

from __future__ import annotations

from typing import Any

import httpx

PROBLEM_JSON = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check `response` is a problem+json answer with `status`, and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "<html" not in response.text.lower()
    assert "Traceback" not in response.text
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    for member in ("type", "title", "detail"):
        assert isinstance(body[member], str) and body[member], body
    return body
