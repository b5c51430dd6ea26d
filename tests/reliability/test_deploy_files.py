"""Static validation of the deployment files (no Docker engine needed): the compose file parses and resolves
(``docker-compose config`` when installed, and a structural check with PyYAML), the Dockerfiles pass hadolint
(when installed) and, most importantly, they run the same commands the reliability tests run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from procs import API_ARGS, MIGRATE_ARGS, WORKER_ARGS

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILES = {"api": REPO / "docker" / "api.Dockerfile", "worker": REPO / "docker" / "worker.Dockerfile"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tool(name: str) -> str | None:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else shutil.which(name)


def require_tool(name: str) -> str:
    exe = tool(name)
    if exe is None:
        msg = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{msg} (CI=true: the deployment files must be validated)")
        pytest.skip(msg)
    return exe


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_cmd(path: Path) -> list[str]:
    """The exec-form CMD of a Dockerfile."""
    cmds = [line for line in path.read_text().splitlines() if line.startswith("CMD ")]
    assert len(cmds) == 1, f"{path.name}: exactly one CMD expected"
    return json.loads(cmds[0][4:])


def test_docker_compose_config_resolves() -> None:
    exe = require_tool("docker-compose")
    out = subprocess.run([exe, "--env-file", str(REPO / ".env.example"), "-f", str(COMPOSE), "config"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "postgresql+psycopg://simprune:change-me@postgres:5432/simprune" in out.stdout


def test_hadolint_is_clean() -> None:
    exe = require_tool("hadolint")
    out = subprocess.run([exe, "--no-color", *map(str, DOCKERFILES.values())], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_services_and_their_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "flower"}
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"  # persistence on
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        assert env["SIMPRUNE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["SIMPRUNE_BROKER_URL"] == "redis://redis:6379/0"
        assert "data:/data" in services[name]["volumes"]  # local storage shared by the API and the workers
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "flower" in services["flower"]["command"]
    assert services["flower"]["command"][1] == "--broker=" + services["api"]["environment"]["SIMPRUNE_BROKER_URL"]


def test_commands_are_the_ones_the_tests_run(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]["command"]
    assert worker == ["simprune", *WORKER_ARGS] == dockerfile_cmd(DOCKERFILES["worker"])
    api = services["api"]["command"]
    assert api == dockerfile_cmd(DOCKERFILES["api"])
    assert api[:2] == ["simprune", API_ARGS[0]] and API_ARGS[1] in api
    assert services["migrate"]["command"] == ["simprune", *MIGRATE_ARGS]
    # and the installed console script really has those commands and options
    from procs import simprune_exe

    for args in (WORKER_ARGS, API_ARGS, MIGRATE_ARGS):
        sub = [args[0], *([args[1]] if args[0] == "db" else [])]
        res = subprocess.run([simprune_exe(), *sub, "--help"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
        assert res.returncode == 0, res.stderr
        for opt in (a for a in args if a.startswith("--")):
            assert opt in res.stdout, (opt, res.stdout)


def test_dockerfiles_build_what_the_project_needs() -> None:
    setup_py = (REPO / "setup.py").read_text()
    pins = dict(re.findall(r"pip install -q (torch)==(\S+)", (REPO / "Makefile").read_text()))
    for name, path in DOCKERFILES.items():
        text = path.read_text()
        for pkg in ("simprune", "app", "worker", "alembic"):
            assert f"COPY {pkg} ./{pkg}" in text, f"{name}: {pkg} not copied"
        assert "setup.py" in text.split("COPY simprune")[0], f"{name}: setup.py not copied"
        assert "pip install './[server]'" in text, f"{name}: the server extra is not installed"
        assert "USER 10001" in text  # not root
        if pins:
            assert f"ARG TORCH_VERSION={pins['torch']}" in text, f"{name}: torch pin differs from the Makefile"
    assert 'find_packages(include=["simprune*", "app*", "worker*"])' in setup_py
    worker = DOCKERFILES["worker"].read_text()
    assert "ARG BASE_IMAGE=nvidia/cuda:" in worker and "runtime" in worker
    assert "--build-arg BASE_IMAGE=python:" in worker  # the documented CPU variant


def test_env_example_covers_the_compose_variables(compose: dict[str, Any]) -> None:
    names = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert names <= example, sorted(names - example)


def test_migrations_ship_in_the_wheel_as_app_migrations(tmp_path: Path) -> None:
    """The scripts live in the top-level alembic/ folder (alembic.ini points there) and the wheel installs
    them as app/migrations, where app.core.db finds them: env.py, script.py.mako and every version."""
    import zipfile

    from app.core.db import migrations_dir

    assert migrations_dir() == REPO / "alembic"
    assert not (REPO / "alembic" / "__init__.py").exists()  # it would shadow the alembic library
    assert "script_location = %(here)s/alembic" in (REPO / "alembic.ini").read_text()
    src = tmp_path / "src"  # build from a copy: an in-tree build leaves build/ behind in the repository
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("simprune", "app", "worker", "alembic"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "whl"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "whl").glob("simprune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"app/migrations/env.py", "app/migrations/script.py.mako"}
    expected |= {f"app/migrations/versions/{p.name}" for p in (REPO / "alembic" / "versions").glob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith("alembic/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "server = app.cli:register" in zipfile.ZipFile(wheel).read(entry_points).decode()
