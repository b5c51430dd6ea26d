"""The server commands of the ``simprune`` CLI: ``serve``, ``worker``, ``keys create|list|revoke``, ``db upgrade``.

They are a plugin of the engine's CLI (:mod:`simprune.cli`), which never imports ``app`` or ``worker`` by name:
pyproject.toml declares ``register`` under the ``simprune.cli`` entry-point group. Without the ``server``
extra, importing this module fails with ImportError (checked below, cheaply, before any command runs) and the
engine's CLI answers these commands with a one-line hint to install ``simprune[server]``.

The heavy imports (uvicorn, SQLAlchemy, Celery, the FastAPI app) happen inside the commands, so loading this
plugin costs ``simprune prune`` next to nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console

# The server extra (pyproject.toml). The alembic library is left out of this check on purpose: run from the
# repository root, the migration scripts' folder `alembic/` would look like an (empty) namespace package.
SERVER_MODULES = ("fastapi", "uvicorn", "python_multipart", "pydantic_settings", "sqlalchemy", "celery")
for _name in SERVER_MODULES:
    if importlib.util.find_spec(_name) is None:
        raise ModuleNotFoundError(f"No module named '{_name}'", name=_name)

console = Console(stderr=True)

#: seconds ``serve`` gives its worker to exit after SIGTERM before it kills the worker's process group
WORKER_STOP_TIMEOUT_S = 8.0
#: seconds uvicorn waits for open connections (event streams, downloads) when stopping
GRACEFUL_SHUTDOWN_S = 5

DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (database, broker, storage). Env SIMPRUNE_DATA_DIR.")
]


def _settings(data_dir: Path | None = None, **env: str) -> Any:
    """Settings after applying CLI options to the environment (so child processes inherit them)."""
    if data_dir is not None:
        os.environ["SIMPRUNE_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    os.environ.update(env)
    from app.core.config import get_settings

    get_settings.cache_clear()
    return get_settings()


def worker_command(loglevel: str = "INFO", hostname: str | None = None) -> list[str]:
    """The argv of a Celery worker process for the current settings (used by ``serve`` and ``worker --gpus``).
    No ``-Q``: the worker consumes the queues of its capability (:func:`worker.celery_app.configure_queues`)."""
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-P", "solo", "-c", "1",
            "--loglevel", loglevel, "-n", hostname or f"simprune-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle"]


# --- serve: the API plus one worker child, stopped together --------------------------------------------------


class _Stop(BaseException):
    """Raised by serve's SIGTERM/SIGINT handler outside uvicorn (before it starts, or when it re-raises the
    signal it shut down on): unwinds to the code that stops the worker."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signum)


def _libc_prctl() -> Any:
    """libc's ``prctl`` (Linux), looked up in the parent: the child only calls it between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


class WorkerChild:
    """The worker process of ``serve``, in its own process group (a terminal's Ctrl-C reaches only ``serve``,
    which stops the worker itself) and, on Linux, killed by the kernel if ``serve`` dies without stopping it."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        prctl = _libc_prctl()
        parent = os.getpid()

        def die_with_parent() -> None:  # runs in the child between fork and exec
            if prctl is not None:
                prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # serve died before prctl took effect
                os._exit(1)

        self.proc = subprocess.Popen(argv, env=env if env is not None else os.environ.copy(),
                                     start_new_session=True, preexec_fn=die_with_parent)
        self.pid = self.proc.pid
        self._terminated_at: float | None = None

    def terminate(self) -> None:
        """SIGTERM to the worker (Celery's warm shutdown); idempotent, safe inside a signal handler."""
        if self._terminated_at is None and self.proc.returncode is None:
            self._terminated_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the worker's whole process group (the worker and whatever it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def stop(self, timeout: float = WORKER_STOP_TIMEOUT_S) -> None:
        """Stop the worker: SIGTERM, then SIGKILL after ``timeout`` seconds (counted from the SIGTERM). A job
        in progress is not lost: the sweeper re-queues it (or the broker redelivers it)."""
        if self.proc.poll() is None:
            self.terminate()
            assert self._terminated_at is not None
            remaining = max(0.0, self._terminated_at + timeout - time.monotonic())
            try:
                self.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                console.print(f"simprune: worker did not stop within {timeout:g} s: killed")
                self.kill()
                self.proc.wait()
        else:
            self.kill()  # the worker is gone; take anything it left behind in its group with it


def _uvicorn_server(app: Any, host: str, port: int, log_level: str, on_exit: Any) -> Any:
    """A uvicorn server whose signal handler also calls ``on_exit`` (stop the worker while the API drains)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            on_exit()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    return Server(config)


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDirOpt = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Disable API keys (single-user, localhost).")] = False,
    worker: Annotated[bool, typer.Option(help="Also start one worker process.")] = True,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the API and one worker (embedded default: SQLite + an SQLite broker, all data under DATA_DIR).

    SIGTERM or SIGINT (Ctrl-C) stops both: the worker gets SIGTERM at once, and is killed if it has not exited
    a few seconds later.
    """
    from app.core.db import upgrade_database
    from app.main import NO_AUTH_WARNING, create_app

    env = {"SIMPRUNE_AUTH_ENABLED": "false"} if no_auth else {}
    settings = _settings(data_dir, **env)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.ensure_dirs()
    upgrade_database(settings.database_url)
    if not settings.auth_enabled:
        console.print(f"[bold red]WARNING: {NO_AUTH_WARNING}[/]")
    console.print(f"simprune: data in {settings.data_dir}; API on http://{host}:{port} (docs at /docs)")

    child: WorkerChild | None = None
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = True
    try:
        if worker:
            child = WorkerChild(worker_command(log_level.upper()))
            console.print(f"simprune: worker started (pid {child.pid})")
        server = _uvicorn_server(create_app(settings), host, port, log_level,
                                 on_exit=child.terminate if child is not None else lambda: None)
        server.run()  # returns after SIGTERM/SIGINT, then re-raises that signal: _raise_stop
        started = server.started
    except _Stop:
        pass
    finally:
        if child is not None:
            # a second signal while the worker stops kills it at once
            for sig in previous:
                signal.signal(sig, lambda *_: child.kill())
            child.stop()
            console.print("simprune: worker stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not started:
        raise typer.Exit(3)  # uvicorn could not start (port in use...), as uvicorn.run exits


# --- worker, keys, db -----------------------------------------------------------------------------------------


def worker(
    data_dir: DataDirOpt = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name (with --gpus: its prefix).")] = None,
    gpus: Annotated[str | None, typer.Option(
        "--gpus", envvar="SIMPRUNE_WORKER_GPUS",
        help="all | 0,2 | none: one supervised worker per GPU (pinned with CUDA_VISIBLE_DEVICES), or one CPU "
             "worker. Without it: one worker in this process, on CUDA when visible.")] = None,
    stop_timeout: Annotated[float, typer.Option(
        help="With --gpus: seconds the workers get to finish after SIGTERM before they are killed.")] = 30.0,
) -> None:
    """Run one worker (solo pool: one job at a time, CUDA-safe), or with --gpus one per GPU, supervised:
    a crashed worker is restarted, SIGTERM/SIGINT stops them all. SIMPRUNE_FAKE_GPUS=N (testing) makes N
    CPU workers stand in for GPUs."""
    settings = _settings(data_dir)
    slots = None
    if gpus is not None:
        from app.worker_supervisor import GpuSpecError, plan_workers

        try:
            slots = plan_workers(gpus, settings, hostname)
        except GpuSpecError as exc:
            typer.echo(f"simprune worker: {exc}", err=True)
            raise typer.Exit(2) from None
    settings.ensure_dirs()
    from app.core.db import upgrade_database

    if settings.database_url.startswith("sqlite"):
        upgrade_database(settings.database_url)
    if slots is not None:
        from app.worker_supervisor import Supervisor

        raise typer.Exit(Supervisor(slots, loglevel, stop_timeout).run())
    from worker.celery_app import celery_app

    argv = worker_command(loglevel, hostname)
    celery_app.worker_main(argv[argv.index("worker"):])


keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the database.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key (and its new tenant).")],
    data_dir: DataDirOpt = None,
    tenant: Annotated[str | None, typer.Option(help="Add the key to this existing tenant id.")] = None,
) -> None:
    """Create an API key; the key itself is printed as the LAST line (it cannot be shown again)."""
    from app.core.db import session_scope, upgrade_database
    from app.services.keys import create_key

    settings = _settings(data_dir)
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as s:
        row, token = create_key(s, name, tenant_id=tenant)
        tenant_id = row.tenant_id
    typer.echo(f"Created API key '{name}' for tenant {tenant_id}. Store it now; it is not shown again.")
    typer.echo(token)


@keys_app.command("list")
def keys_list(
    data_dir: DataDirOpt = None,
    tenant: Annotated[str | None, typer.Option(help="Only the keys of this tenant id.")] = None,
    active: Annotated[bool, typer.Option("--active", help="Leave out revoked keys.")] = False,
) -> None:
    """List API keys: id, tenant, name, public prefix, created, last used, revoked (never the secret)."""
    from app.core.db import session_scope, upgrade_database
    from app.services.keys import list_keys

    settings = _settings(data_dir)
    upgrade_database(settings.database_url)

    def when(t: Any) -> str:
        return t.strftime("%Y-%m-%d %H:%M") if t else "-"

    with session_scope(settings.database_url) as s:
        rows = list_keys(s, tenant, include_revoked=not active)
        lines = [f"{r.id}\t{r.tenant_id}\t{r.name}\tsp_{r.prefix}_...\t{when(r.created_at)}\t"
                 f"{when(r.last_used_at)}\t{'revoked ' + when(r.revoked_at) if r.revoked_at else 'active'}"
                 for r in rows]
    typer.echo("id\ttenant\tname\tprefix\tcreated\tlast_used\tstatus")
    for line in lines:
        typer.echo(line)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id (key_...), its prefix, or the key itself.")],
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke an API key: requests with it get 401 from now on (exit code 1 when no key matches)."""
    from app.core.db import session_scope, upgrade_database
    from app.services.keys import revoke_key

    settings = _settings(data_dir)
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as s:
        row = revoke_key(s, key)
        found = None if row is None else (row.id, row.tenant_id, row.revoked_at)
    if found is None:
        typer.echo(f"no API key matches {key[:40]!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"API key {found[0]} of tenant {found[1]} revoked at {found[2]:%Y-%m-%d %H:%M:%S} UTC")


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDirOpt = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the database migrations (SQLite or PostgreSQL, from SIMPRUNE_DATABASE_URL)."""
    from app.core.db import upgrade_database

    settings = _settings(data_dir)
    upgrade_database(settings.database_url, revision)
    typer.echo(f"database at revision {revision}")


def register(cli: typer.Typer) -> None:
    """Add the server commands to the ``simprune`` CLI (the ``simprune.cli`` entry point ``server``)."""
    cli.command("serve")(serve)
    cli.command("worker")(worker)
    cli.add_typer(keys_app, name="keys")
    cli.add_typer(db_app, name="db")
