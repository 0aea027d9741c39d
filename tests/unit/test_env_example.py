"""`.env.example` documents every setting, each with a comment line above it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
_SETTING = re.compile(r"^#?\s*([A-Z][A-Z0-9_]+)=")


def _documented() -> dict[str, str]:
    """setting name → the line right above it, which must be its comment (a setting may be
    listed commented out, e.g. `# DATABASE_URL=…`, and still counts as listed)."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    found: dict[str, str] = {}
    for index, line in enumerate(lines):
        match = _SETTING.match(line)
        if match:
            above = lines[index - 1] if index else ""
            found[match.group(1)] = "" if _SETTING.match(above) else above
    return found


def test_every_setting_is_in_env_example_and_nothing_else() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    assert set(_documented()) == fields


@pytest.mark.parametrize("name", sorted(n.upper() for n in Settings.model_fields))
def test_every_setting_has_a_comment(name: str) -> None:
    comment = _documented().get(name, "")
    assert comment.startswith("# ") and len(comment) > 10, f"{name} has no comment above it"


def test_env_example_values_parse_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert settings.auth == "dev" and settings.provider == "local"
