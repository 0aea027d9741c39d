"""The Dockerfile installs the way the README does (`dev.py install`), and that install works.

No Docker engine runs here, so the image's install step is exercised directly: the same
`dev.py install --prod` into a fresh virtual environment, then the installed `atelier`
runs from a directory laid out as the image lays it out (/app with migrations/ only).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_dockerfile_is_multi_stage_non_root_and_runs_atelier_serve() -> None:
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", DOCKERFILE, re.M)
    assert len(stages) >= 2
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    cmd = re.findall(r"^CMD\s+(.+)$", DOCKERFILE, re.M)[-1]
    assert '"atelier", "serve"' in cmd


def test_dockerfile_installs_with_the_readme_bootstrap() -> None:
    runs = re.findall(r"^RUN\s+(.+)$", DOCKERFILE, re.M)
    assert any(r.startswith("python dev.py install --prod") for r in runs)
    readme = (ROOT / "README.md").read_text()
    assert "python3 dev.py serve" in readme and "python3 dev.py test" in readme
    # what dev.py installs from is copied into the build stage
    for name in ("pyproject.toml", "requirements.lock", "dev.py"):
        assert re.search(rf"^COPY .*\b{re.escape(name)}\b", DOCKERFILE, re.M), name


def test_the_image_install_step_produces_a_working_atelier(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "install", "--prod", "--venv", str(venv)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    app_dir = tmp_path / "app"  # as in the image: WORKDIR /app holding migrations/ only
    shutil.copytree(ROOT / "migrations", app_dir / "migrations")
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    env.update({"ENV": "development", "DATA_DIR": str(tmp_path / "data"), "LOG_JSON": "false"})
    token = subprocess.run(
        [str(venv / "bin" / "atelier"), "dev-token", "user_docker", "--new-key"],
        cwd=app_dir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert token.stdout.count(".") == 2  # a JWT
    # The production install is not editable: the package lives in the venv, not the repo.
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import app, pytest"],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "No module named 'pytest'" in probe.stderr  # dev tools stay out of the image
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import app; print(app.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert str(venv) in where.stdout


def test_dev_py_test_runs_the_suite_in_processes_unless_told_otherwise() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    default = dev._workers([])
    assert default[:1] == ["-n"] and 2 <= int(default[1]) <= 8, default
    assert dev._workers(["-m", "db", "-q"]) == default
    for chosen in (["-n", "0"], ["-n0"], ["--numprocesses=3"], ["-p", "no:xdist"]):
        assert dev._workers([*chosen, "tests/api"]) == [], chosen
