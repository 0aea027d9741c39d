#!/usr/bin/env python3
"""Run Atelier from a fresh clone with nothing but Python 3.11+.

    python3 dev.py serve [--host H] [--port P]   the service on its embedded defaults
    python3 dev.py test [pytest args]            the whole test suite, in several processes
    python3 dev.py install [--prod] [--venv DIR] only set up the virtual environment

Each command first makes sure `.venv` (or --venv) holds exactly what the lock file pins,
hash-checked, and reinstalls only when the lock file or pyproject.toml changed. The
Dockerfile builds its image with `dev.py install --prod`, the same steps.
Standard library only: this runs before any dependency is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEV_LOCK = ROOT / "requirements-dev.lock"
PROD_LOCK = ROOT / "requirements.lock"
STAMP = ".atelier-installed"


def _bin(env_dir: Path, name: str) -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return env_dir / scripts / name


def _fingerprint(lock: Path, editable: bool) -> str:
    digest = hashlib.sha256()
    for path in (lock, ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    digest.update(b"editable" if editable else b"copy")
    return digest.hexdigest()


def _run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True)


def install(env_dir: Path, *, prod: bool = False) -> Path:
    """Create `env_dir` if needed and make it match the lock file; returns env_dir."""
    lock = PROD_LOCK if prod else DEV_LOCK
    editable = not prod
    wanted = _fingerprint(lock, editable)
    stamp = env_dir / STAMP
    python = _bin(env_dir, "python")
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return env_dir
    if not python.exists():
        print(f"dev.py: creating virtual environment in {env_dir}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    print(f"dev.py: installing {lock.name} (hash-checked)", file=sys.stderr)
    pip = (python, "-m", "pip", "--disable-pip-version-check", "--no-input")
    _run(*pip, "install", "--quiet", "--require-hashes", "--no-deps", "-r", lock)
    target = ["-e", str(ROOT)] if editable else [str(ROOT)]
    _run(*pip, "install", "--quiet", "--no-deps", "--no-build-isolation", *target)
    stamp.write_text(wanted + "\n")
    return env_dir


def _workers(pytest_args: list[str]) -> list[str]:
    """pytest-xdist's options for the suite, unless the caller chose (`-n 0`: one process).

    Half of a test's time is spent waiting on PostgreSQL, a server it started or a socket, so
    twice as many processes as cores (at most 8) finish it in about half the time. Each
    process starts its own embedded PostgreSQL; tests on a shared server keep apart by name.
    """
    if any(a.startswith(("-n", "--numprocesses")) or a == "no:xdist" for a in pytest_args):
        return []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = min(8, 2 * (cores or 1))
    return ["-n", str(count), "--dist", "worksteal"]


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py runs before the venv exists)
        print("dev.py: Atelier needs Python 3.11 or newer", file=sys.stderr)
        return 2
    if not argv or argv[0] not in {"serve", "test", "install"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    env_dir = ROOT / ".venv"
    prod = False
    if command == "install":
        if "--venv" in rest:
            env_dir = Path(rest[rest.index("--venv") + 1]).resolve()
        prod = "--prod" in rest
    install(env_dir, prod=prod)
    if command == "install":
        return 0
    os.chdir(ROOT)
    if command == "serve":
        args = [str(_bin(env_dir, "atelier")), "serve", *rest]
    else:
        args = [str(_bin(env_dir, "python")), "-m", "pytest", *_workers(rest), *rest]
    if os.name == "nt":
        return subprocess.run(args).returncode
    os.execv(args[0], args)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
