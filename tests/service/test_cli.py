"""Service CLI: ``keys create`` (key on the last line), ``db upgrade`` (migration == models, SQLite and
PostgreSQL), ``serve`` (API + worker child, stopped together) and ``submit --wait`` (upload, progress,
download) against a live server with a real worker. The engine's CLI loads the server commands as the
``simprune.cli`` entry-point plugin, never by name, and without the server extra answers them with a hint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from service_helpers import REPO, LiveServer, WorkerProcess, free_port, make_embedded
from sqlalchemy import create_engine
from typer.testing import CliRunner

import simprune.cli
from app import cli as server_cli
from app.core.config import Settings
from app.main import create_app
from app.models import Base
from simprune.cli import remote


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    server_cli.register(app)
    remote.register(app)
    return app


@pytest.fixture(autouse=True)
def _restore_env() -> object:
    saved = {k: v for k, v in os.environ.items() if k.startswith("SIMPRUNE_")}
    yield
    for k in [k for k in os.environ if k.startswith("SIMPRUNE_")]:
        del os.environ[k]
    os.environ.update(saved)
    from app.core.config import get_settings

    get_settings.cache_clear()


def test_keys_create_prints_a_working_key_last(cli: typer.Typer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    res = CliRunner().invoke(cli, ["keys", "create", "alice", "--data-dir", str(data)])
    assert res.exit_code == 0, res.output
    key = res.output.strip().splitlines()[-1]
    assert key.startswith("sp_") and len(key) > 40
    s = Settings(data_dir=data)
    with TestClient(create_app(s)) as c:
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key[:-1]}"}).status_code == 401


def _diff(url: str) -> list[object]:
    eng = create_engine(url)
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    eng.dispose()
    return diff


def test_db_upgrade_matches_the_models(cli: typer.Typer, tmp_path: Path, pg_url: str) -> None:
    res = CliRunner().invoke(cli, ["db", "upgrade", "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert _diff(f"sqlite:///{tmp_path / 'd' / 'simprune.db'}") == []
    assert _diff(pg_url) == []  # pg_url is migrated by the fixture through the same code path


def test_serve_runs_api_and_worker_and_stops_both(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPRUNE_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from simprune.cli import main; main()", "serve", "--port", str(port),
         "--data-dir", str(tmp_path / "d"), "--no-auth", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs").json()["items"] == []  # no auth needed
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "no worker child process"
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=40)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "AUTHENTICATION IS DISABLED" in out
    assert "worker stopped" in out
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert (tmp_path / "d" / "simprune.db").exists() and (tmp_path / "d" / "broker.sqlite").exists()


def test_submit_wait_downloads_artifacts(cli: typer.Typer, tmp_path: Path, data_files: dict[str, Path]) -> None:
    s = make_embedded(tmp_path / "data")
    res = CliRunner().invoke(cli, ["keys", "create", "bob", "--data-dir", str(s.data_dir)])
    key = res.output.strip().splitlines()[-1]
    out = tmp_path / "out"
    with LiveServer(s) as server, WorkerProcess(s) as worker:
        res = CliRunner().invoke(cli, [
            "submit", str(data_files["ckpt"]), "--arch", "cifar_resnet20", "--method", "l1",
            "--pruning-ratio", "0.25", "--wait", "--out", str(out)],
            env={"SIMPRUNE_SERVER": server.url, "SIMPRUNE_API_KEY": key})
        assert res.exit_code == 0, f"{res.output}\n{worker.log()}"
        bad = CliRunner().invoke(cli, ["submit", str(data_files["junk"]), "--arch", "cifar_resnet20",
                                       "--pruning-ratio", "0.2", "--server", server.url, "--api-key", key])
    assert res.output.strip().splitlines()[-1].startswith("job_")
    assert {"model.pt2", "model.onnx", "weights.safetensors", "report.json"} <= {p.name for p in out.iterdir()}
    assert bad.exit_code == 2 and "422" in bad.output


def test_the_server_commands_are_the_entry_point_plugin() -> None:
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group=simprune.cli.PLUGIN_GROUP) if ep.name == simprune.cli.SERVER_PLUGIN]
    assert ep.value == "app.cli:register" and ep.load() is server_cli.register
    app = typer.Typer()
    simprune.cli.load_plugins(app)
    assert {c.name for c in app.registered_commands} >= {"serve", "worker"}
    assert {g.name for g in app.registered_groups} >= {"keys", "db"}


def test_the_engine_cli_never_imports_the_server_by_name() -> None:
    code = ("import sys, simprune, simprune.cli, simprune.cli.local, simprune.cli.remote, simprune.client; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'app', 'worker', 'fastapi', 'celery', "
            "'sqlalchemy', 'uvicorn', 'alembic', 'pydantic_settings', 'redis', 'boto3', 'psycopg'}); "
            "print(bad); assert not bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    for path in (REPO / "simprune").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] not in {"app", "worker"}, f"{path}: {line.strip()}"


@pytest.mark.parametrize("argv", [["serve"], ["serve", "--port", "8001", "--no-auth"], ["worker"],
                                  ["keys", "create", "me"], ["db", "upgrade", "--data-dir", "x"]])
def test_without_the_server_extra_the_commands_say_how_to_get_it(argv: list[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    missing = EntryPoint(name="server", value="simprune_no_such_server_module:register", group="simprune.cli")
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group=None: [missing])
    app = typer.Typer()
    simprune.cli.load_plugins(app)
    remote.register(app)  # a second command, so that typer keeps the command names
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: the server commands need the server extra: pip install 'simprune[server]'"), res.output
