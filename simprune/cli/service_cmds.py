"""Service commands: ``serve``, ``worker``, ``keys create``, ``db upgrade`` and ``submit``.

The server side (``app``/``worker`` packages) is imported inside the commands, so the engine package never
imports it at module level and ``simprune prune`` stays light.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)

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
    """The argv of a Celery worker process for the current settings (used by ``serve``)."""
    from app.core.config import get_settings

    s = get_settings()
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-P", "solo", "-c", "1",
            "-Q", s.queue, "--loglevel", loglevel, "-n", hostname or f"simprune-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle"]


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDirOpt = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Disable API keys (single-user, localhost).")] = False,
    worker: Annotated[bool, typer.Option(help="Also start one worker process.")] = True,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the API and one worker (embedded default: SQLite + an SQLite broker, all data under DATA_DIR)."""
    import uvicorn

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
    proc: subprocess.Popen[bytes] | None = None
    if worker:
        proc = subprocess.Popen(worker_command(log_level.upper()), env=os.environ.copy())
        console.print(f"simprune: worker started (pid {proc.pid})")
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: the job in progress is redelivered later
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            console.print("simprune: worker stopped")


def worker(
    data_dir: DataDirOpt = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
) -> None:
    """Run one worker (solo pool: one job at a time, CUDA-safe). Scale out by starting more of them."""
    settings = _settings(data_dir)
    settings.ensure_dirs()
    from app.core.db import upgrade_database

    if settings.database_url.startswith("sqlite"):
        upgrade_database(settings.database_url)
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


def submit(
    checkpoint: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Checkpoint to prune.")],
    arch: Annotated[str, typer.Option(help="Architecture name (see GET /v1/architectures).")],
    method: Annotated[str, typer.Option(help="Pruning method (see GET /v1/methods).")] = "l1",
    target_flops_reduction: Annotated[float | None, typer.Option(help="Fraction of FLOPs to remove.")] = None,
    pruning_ratio: Annotated[str | None, typer.Option(help="Channel fraction to remove, or 'auto'.")] = None,
    calib: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Calibration data.")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", exists=True, dir_okay=False,
                                                   help="Evaluation data.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Number of classes (default: from the checkpoint).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job and download its artifacts.")] = False,
    out: Annotated[Path, typer.Option(help="Where --wait downloads the artifacts.")] = Path("out"),
    server: Annotated[str, typer.Option(envvar="SIMPRUNE_SERVER", help="Server URL.")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(envvar="SIMPRUNE_API_KEY", help="API key.")] = None,
) -> None:
    """Upload a checkpoint (and data), submit a pruning job and optionally wait for it and download the results."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from simprune.client import ApiError, Client

    if (target_flops_reduction is None) == (pruning_ratio is None):
        raise typer.BadParameter("give exactly one of --target-flops-reduction and --pruning-ratio")
    ratio: float | str | None = None
    if pruning_ratio is not None:
        ratio = pruning_ratio if pruning_ratio == "auto" else float(pruning_ratio)
    try:
        with Client(server, api_key=api_key) as c:
            model = c.upload_model(checkpoint, arch=arch, num_classes=num_classes)
            console.print(f"model {model['id']}: {model['params']:,} params, {model['flops']:,} FLOPs")
            fields: dict[str, Any] = {}
            if calib is not None:
                fields["calibration_dataset_id"] = c.upload_dataset(calib)["id"]
            if eval_data is not None:
                fields["eval_dataset_id"] = c.upload_dataset(eval_data)["id"]
            job = c.submit(model["id"], method, target_flops_reduction=target_flops_reduction,
                           pruning_ratio=ratio, idempotency_key=uuid.uuid4().hex, **fields)
            console.print(f"job {job['id']} queued")
            if not wait:
                typer.echo(job["id"])
                return
            with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                          TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("queued", total=1.0)

                def show(j: dict[str, Any]) -> None:
                    bar.update(task, completed=j["progress"], description=f"{j['status']}: {j['stage'] or ''}")

                job = c.wait(job["id"], progress=show, poll_interval=0.5, raise_on_failure=False)
            if job["status"] != "succeeded":
                console.print(f"[red]job {job['status']}: {job.get('error') or ''}[/]")
                raise typer.Exit(1)
            out.mkdir(parents=True, exist_ok=True)
            for art in job["artifacts"]:
                c.download(job["id"], art["name"], out / art["name"])
            console.print(f"{len(job['artifacts'])} artifacts in {out}")
            typer.echo(job["id"])
    except ApiError as exc:
        console.print(f"[red]error: {exc}[/]")
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add the service commands to the ``simprune`` CLI."""
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.command("submit")(submit)
    app.add_typer(keys_app, name="keys")
    app.add_typer(db_app, name="db")
