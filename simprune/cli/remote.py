"""``simprune submit``: drive a simprune server from the command line (upload, submit, follow, download).

Only :mod:`simprune.client` (httpx) is used: this works without the server extra.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)


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
    """Add ``submit`` to the ``simprune`` CLI."""
    app.command("submit")(submit)
