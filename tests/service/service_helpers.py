"""Helpers for the service tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.db import session_scope, upgrade_database

REPO = Path(__file__).resolve().parents[2]


def base_overrides() -> dict[str, Any]:
    return {
        "auth_enabled": True,
        "queue": f"prune_test_{secrets.token_hex(4)}",
        "progress_interval_s": 0.1,
        "cancel_check_interval_s": 0.1,
        "device": "cpu",
    }


def make_embedded(root: Path, **extra: Any) -> Settings:
    """Embedded-default settings (SQLite + SQLite broker) under ``root``, migrated."""
    s = Settings(data_dir=root, **{**base_overrides(), **extra})
    s.ensure_dirs()
    upgrade_database(s.database_url)
    return s


def new_key(settings: Settings, name: str = "tester") -> str:
    """A fresh API key (and tenant)."""
    from app.services.keys import create_key

    with session_scope(settings.database_url) as s:
        _, token = create_key(s, name)
    return token


def stored_files(settings: Settings) -> list[Path]:
    """Every file in storage and in the temp directory."""
    return [p for root in (settings.storage_dir, settings.tmp_dir) if root.exists()
            for p in root.rglob("*") if p.is_file()]


# --- live processes --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving ``create_app(settings)`` in a background thread."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from app.main import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


ENGINE_TEST_SETTINGS = ("SIMPRUNE_DEFAULT_PRESET", "SIMPRUNE_MEASURE_LATENCY")
"""Engine operator settings that tests/conftest.py sets to keep jobs small: worker processes get them too."""


def worker_env(settings: Settings) -> dict[str, str]:
    """A worker process's environment: ``settings`` as SIMPRUNE_*, no other SIMPRUNE_* of this process except the
    engine settings that keep test jobs small (:data:`ENGINE_TEST_SETTINGS`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPRUNE_") or k in ENGINE_TEST_SETTINGS}
    env.update({
        "SIMPRUNE_DATA_DIR": str(settings.data_dir), "SIMPRUNE_DATABASE_URL": settings.database_url,
        "SIMPRUNE_BROKER_URL": settings.broker_url, "SIMPRUNE_QUEUE": settings.queue,
        "SIMPRUNE_PROGRESS_INTERVAL_S": str(settings.progress_interval_s),
        "SIMPRUNE_CANCEL_CHECK_INTERVAL_S": str(settings.cancel_check_interval_s),
        "SIMPRUNE_DEVICE": settings.device, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
    })
    return env


class WorkerProcess:
    """A real ``celery -A worker.celery_app worker`` process for ``settings`` (log in DATA_DIR/worker.log)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_path = settings.data_dir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-P", "solo", "-c", "1",
               "-Q", self.settings.queue, "--loglevel", "INFO", "-n", f"test-{secrets.token_hex(3)}@%h",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=worker_env(self.settings), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
