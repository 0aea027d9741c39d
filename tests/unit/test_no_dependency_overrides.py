"""app.main adds the routers' routes to every app as shared objects (FastAPI 0.165's
include_router is slow to match; rebuilding routes per app is slow to build), so an app's
`dependency_overrides` would not reach them: an override would be ignored without a word.
Nothing may rely on them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_nothing_relies_on_dependency_overrides() -> None:
    uses = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("app", "tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ".dependency_overrides" in line
    ]
    assert uses == [], (
        "app.dependency_overrides does not reach routes added by app.main._add_routes; "
        f"build the app with the settings or stand-ins the test needs instead: {uses}"
    )
