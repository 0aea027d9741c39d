"""Reading text/event-stream responses in tests: a line-fed parser of server-sent events."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseEvent:
    event: str | None
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class SseParser:
    """Feed it lines of a text/event-stream; it returns each event as it completes."""

    def __init__(self) -> None:
        self._fields: dict[str, list[str]] = {}

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._fields:
                return None
            fields, self._fields = self._fields, {}
            return SseEvent(
                event=fields.get("event", [None])[-1],
                data="\n".join(fields.get("data", [])),
                id=fields.get("id", [None])[-1],
            )
        if line.startswith(":"):
            return None  # a comment (keep-alive ping)
        name, _, value = line.partition(":")
        self._fields.setdefault(name, []).append(value.removeprefix(" "))
        return None
