"""The imports of `app/` follow the layering STYLE.md draws, so the house stays as drawn.

Every module of `app/` belongs to one part, and may import (anywhere in the module: at the
top, in a function, under TYPE_CHECKING) only from the parts listed for it:

- core: `app.config`, `app.errors`, `app.schemas.*`, `app.core.*` (shared helpers such as
  secret files), `app.logs`, `app.observability` and `app.headers` (logging, metrics and the
  security headers, which the 500 handler in `app.errors` also needs). Imports core only.
- db: `app.db.*`. SQL only: core and db.
- adapters: the implementations in `app.services.providers.*` and `app.services.storage.*`
  (gemini, local, r2, their factories). Core and their own package only: never a service,
  never the other adapter package.
- interfaces: `app.services.providers.base` and `app.services.storage.base`, the Protocols
  (and their errors) that any part above core may name. Like the adapters, they import core
  and their own package only.
- services: the rest of `app.services.*`. Core, db, other services and the interfaces; never
  an implementation (the entry point picks one and hands it in). The worker loop
  (`app.services.worker`) does not import db: its transactions live in `app.services.jobs`.
- web: `app.routers.*`, `app.deps` (the routers' dependencies: it names services, as routers
  do), `app.middleware`, `app.openapi`, `app.openapi_examples`, `app.openapi_samples` and
  `app.serving`. Core, services, interfaces and the web modules that are not routers (a
  router is a leaf that only the entry points import); never db (readiness included), never
  an implementation.
- entry: `app.main` and `app.cli`, the composition root. May wire anything; nothing but entry
  imports entry.

Besides: no import cycle between modules, and no module over 400 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
MAX_LINES = 400

INTERFACES = frozenset({"app.services.providers.base", "app.services.storage.base"})
CORE_MODULES = frozenset(
    {"app.config", "app.errors", "app.logs", "app.observability", "app.headers"}
)
WEB_MODULES = frozenset(
    {
        "app.deps",
        "app.middleware",
        "app.openapi",
        "app.openapi_examples",
        "app.openapi_samples",
        "app.serving",
    }
)
ENTRY_MODULES = frozenset({"app.main", "app.cli"})
ADAPTER_PACKAGES = ("app.services.providers", "app.services.storage")

# What each part may import, besides the exceptions spelled out in `forbidden_reason`.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "db": frozenset({"core", "db"}),
    "adapters": frozenset({"core"}),  # and their own package
    "interfaces": frozenset({"core"}),
    "services": frozenset({"core", "db", "interfaces", "services"}),
    "web": frozenset({"core", "interfaces", "services", "web"}),
    "entry": frozenset({"core", "db", "adapters", "interfaces", "services", "web", "entry"}),
}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def part_of(module: str) -> str | None:
    """The part a module belongs to; None for one the drawing does not place."""
    if module in ENTRY_MODULES:
        return "entry"
    if module in CORE_MODULES or _within(module, "app.schemas") or _within(module, "app.core"):
        return "core"
    if _within(module, "app.db"):
        return "db"
    if module in INTERFACES:
        return "interfaces"
    if any(_within(module, package) for package in ADAPTER_PACKAGES):
        return "adapters"
    if _within(module, "app.services"):
        return "services"
    if module in WEB_MODULES or _within(module, "app.routers"):
        return "web"
    if module == "app":
        return "core"  # the empty top package
    return None


def _adapter_package(module: str) -> str | None:
    return next((p for p in ADAPTER_PACKAGES if _within(module, p)), None)


def forbidden_reason(source: str, target: str) -> str | None:
    """Why `source` may not import `target`, or None when the layering allows it."""
    src, dst = part_of(source), part_of(target)
    if src is None:
        return f"{source} is in no part of the layering: place it (and say why)"
    if dst is None:
        return f"{target} is in no part of the layering: place it (and say why)"
    if dst == "entry" and src != "entry":
        return "only the entry points import an entry point"
    if src in ("adapters", "interfaces") and dst in ("adapters", "interfaces"):
        if _adapter_package(source) == _adapter_package(target):
            return None
        return "an adapter imports only core and its own package"
    if source == "app.services.worker" and dst == "db":
        return "the worker loop's transactions live in a service (app.services.jobs)"
    if _within(target, "app.routers") and src != "entry":
        return "only the entry points import a router (each router is a leaf)"
    if dst not in MAY_IMPORT[src]:
        return f"{src} ({source}) may not import {dst} ({target})"
    return None


def imports_of(module: str, source: str, known: Iterable[str]) -> set[str]:
    """The modules of `app` that `source` (the text of `module`) imports, each resolved to a
    module in `known` where it names one: `from app.db import jobs` is app.db.jobs,
    `from app.errors import NotFound` is app.errors."""
    known = set(known)
    is_package = any(other.startswith(module + ".") for other in known)
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 packages
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                origin = ".".join([*parts, *([node.module] if node.module else [])])
            names = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name == "app" or name.startswith("app."))
    return found


def app_sources(app_dir: Path = APP) -> dict[str, str]:
    """{module name: source} for every module under `app/`."""
    sources: dict[str, str] = {}
    for path in sorted(app_dir.rglob("*.py")):
        parts = path.relative_to(app_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        sources[".".join(parts)] = path.read_text()
    return sources


def forbidden_arrows(sources: Mapping[str, str]) -> list[str]:
    """Every import among `sources` that the layering forbids, as readable lines."""
    arrows = []
    for module, source in sorted(sources.items()):
        for target in sorted(imports_of(module, source, sources)):
            reason = forbidden_reason(module, target)
            if reason is not None:
                arrows.append(f"{module} -> {target}: {reason}")
    return arrows


def import_cycles(sources: Mapping[str, str]) -> list[list[str]]:
    """The import cycles among `sources` (each as the modules on it), found depth first."""
    graph = {m: imports_of(m, s, sources) & set(sources) for m, s in sources.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


# -- the real app ---------------------------------------------------------------------------


def test_no_import_in_app_crosses_the_layering() -> None:
    sources = app_sources()
    assert "app.services.jobs" in sources and "app.routers.health" in sources  # it looked
    assert forbidden_arrows(sources) == []


def test_every_module_of_app_has_a_part() -> None:
    assert [m for m in app_sources() if part_of(m) is None] == []


def test_app_has_no_import_cycle() -> None:
    assert import_cycles(app_sources()) == []


def test_no_module_of_app_is_over_400_lines() -> None:
    lengths = {m: len(s.splitlines()) for m, s in app_sources().items()}
    assert {m: n for m, n in lengths.items() if n > MAX_LINES} == {}


# -- the checker itself fails on what it must refuse ----------------------------------------

_REAL = app_sources()


def _with(module: str, source: str) -> dict[str, str]:
    """The app's modules, with `module` (new or replaced) holding `source`."""
    return {**_REAL, module: source}


@pytest.mark.parametrize(
    ("module", "source", "reason"),
    [
        ("app.routers.health", "from app.db import migrate\n", "web (app.routers.health)"),
        (
            "app.routers.files",
            "from app.services.storage.local import LocalStorage\n",
            "web (app.routers.files) may not import adapters",
        ),
        (
            "app.services.worker",
            "from app.db import jobs\n",
            "the worker loop's transactions",
        ),
        (
            "app.services.storage.local",
            "from app.services import credits\n",
            "adapters (app.services.storage.local) may not import services",
        ),
        (
            "app.services.providers.gemini",
            "from app.services.storage.base import Storage\n",
            "an adapter imports only core",
        ),
        (
            "app.services.gallery",
            "from app.services.storage import r2\n",
            "services (app.services.gallery) may not import adapters",
        ),
        ("app.db.jobs", "from app.services import credits\n", "db (app.db.jobs)"),
        ("app.errors", "import app.services.users\n", "core (app.errors)"),
        ("app.deps", "from .db import users\n", "web (app.deps) may not import db"),
        ("app.services.users", "from app.main import create_app\n", "only the entry points"),
        ("app.routers.me", "from app.routers import images\n", "import a router"),
        ("app.billing", "from app.config import Settings\n", "app.billing is in no part"),
    ],
)
def test_a_forbidden_arrow_is_reported(module: str, source: str, reason: str) -> None:
    arrows = forbidden_arrows(_with(module, source))
    assert len(arrows) == 1 and reason in arrows[0], arrows


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("app.routers.health", "from app.services import operations\n"),
        ("app.routers.files", "from app.services.storage.base import SignedStorage\n"),
        ("app.services.jobs", "from app.db import jobs\nfrom app.services import credits\n"),
        ("app.services.storage.local", "from app.core.secret_files import read_or_create\n"),
        ("app.services.storage.factory", "from app.services.storage import local, r2\n"),
        ("app.main", "from app.services.storage.local import LocalStorage\n"),
        ("app.cli", "from app.db import migrate\n"),
        ("app.services.billing", "from app.db import ledger\nfrom app.errors import Conflict\n"),
    ],
)
def test_an_allowed_arrow_passes(module: str, source: str) -> None:
    assert forbidden_arrows(_with(module, source)) == []


def test_a_cycle_is_reported() -> None:
    sources = _with("app.services.credits", "from app.services import users\n")
    sources = {**sources, "app.services.users": "from app.services import credits\n"}
    cycles = import_cycles(sources)
    assert [set(cycle) for cycle in cycles] == [{"app.services.credits", "app.services.users"}]
