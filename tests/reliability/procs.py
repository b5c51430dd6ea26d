"""Real processes for the reliability tests, started with the same commands the deployment files run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from service_helpers import REPO, free_port, worker_env

from app.core.config import Settings

# what docker-compose.yml and the Dockerfiles run (test_deploy_files checks they agree)
WORKER_ARGS = ["worker", "--loglevel", "INFO"]
API_ARGS = ["serve", "--no-worker"]
MIGRATE_ARGS = ["db", "upgrade"]

FAST_RECOVERY = {
    "heartbeat_interval_s": 0.3, "stale_job_after_s": 2.5, "sweep_interval_s": 0.5,
    "requeue_queued_after_s": 1.5, "max_attempts": 3,
}


def simprune_exe() -> str:
    """The ``simprune`` console script of this environment."""
    exe = Path(sys.executable).parent / "simprune"
    return str(exe) if exe.exists() else (shutil.which("simprune") or "simprune")


def env_for(settings: Settings) -> dict[str, str]:
    """The environment a process needs to run against ``settings`` (every field as SIMPRUNE_*)."""
    env = worker_env(settings)
    for name, value in settings.model_dump().items():
        if value not in (None, "") and not isinstance(value, (dict, list)):
            env[f"SIMPRUNE_{name.upper()}"] = str(value)
    return env


class Proc:
    """A subprocess with its output in ``log_path``; stopped (then killed) on exit."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv, self.env, self.log_path = argv, env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self._fh = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=self._fh, stderr=subprocess.STDOUT)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_fh"):
            self._fh.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:] if self.log_path.exists() else ""

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_proc(settings: Settings, name: str) -> Proc:
    """``simprune worker --loglevel INFO`` (the compose worker's command) for ``settings``."""
    return Proc([simprune_exe(), *WORKER_ARGS], env_for(settings), settings.data_dir / f"{name}.log")


def api_proc(settings: Settings, port: int, name: str = "api") -> Proc:
    """``simprune serve --no-worker`` (the compose api's command) on ``port``."""
    argv = [simprune_exe(), *API_ARGS, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return Proc(argv, env_for(settings), settings.data_dir / f"{name}.log")


def serve_proc(data_dir: Path, port: int, name: str = "serve") -> Proc:
    """``simprune serve --no-auth`` as a user runs it on one machine: the embedded default (SQLite database and
    broker under ``data_dir``), the API on ``port`` and one worker child. The environment has no SIMPRUNE_*;
    log level info, so the worker's "ready." line reaches the log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPRUNE_")}
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [simprune_exe(), "serve", "--data-dir", str(data_dir), "--no-auth", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "info"]
    return Proc(argv, env, data_dir / f"{name}.log")


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (``/proc/PID/task/*/children``, else ``pgrep -P``; no psutil)."""
    tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if tasks:
        found: list[int] = []
        for f in tasks:
            try:
                found += [int(c) for c in f.read_text().split()]
            except OSError:  # the thread ended meanwhile
                pass
        return sorted(set(found))
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(c) for c in out.split())


def pid_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (no such process, or a zombie not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_http(url: str, timeout: float = 60) -> None:
    """Wait until ``url`` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not come up")


class RedisServer:
    """A private, non-persistent ``redis-server`` on its own port (never the shared one on 6379)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: everything in memory (the queued messages) is lost."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class MotoServer:
    """moto's standalone S3-compatible server (``python -m moto.server``) on a free port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self._fh = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._fh, stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url, timeout=1)
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._fh.close()


def s3_settings(moto: MotoServer, bucket: str) -> dict[str, Any]:
    """Settings fields for S3 storage on ``moto`` (creates the bucket)."""
    import boto3

    fields = {"storage": "s3", "s3_bucket": bucket, "s3_endpoint_url": moto.url, "s3_access_key_id": "testing",
              "s3_secret_access_key": "testing", "s3_region": "us-east-1"}
    boto3.client("s3", endpoint_url=moto.url, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return fields
