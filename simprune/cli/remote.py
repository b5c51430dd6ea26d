"""Drive a simprune server from the command line: ``simprune submit`` (upload, submit, follow, download) and
``simprune jobs list|show|wait|cancel|download|delete``, ``simprune models|datasets list|delete``,
``simprune profiles upload|list|show|delete`` (device latency profiles for ``submit --target-speedup``).

Only :mod:`simprune.client` (httpx) is used: this works without the server extra. The server comes from
``--server`` or ``SIMPRUNE_SERVER``, the key from ``--api-key`` or ``SIMPRUNE_API_KEY``.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from simprune.client import Client

console = Console(stderr=True)

ServerOpt = Annotated[str, typer.Option(envvar="SIMPRUNE_SERVER", help="Server URL.")]
KeyOpt = Annotated[str | None, typer.Option(envvar="SIMPRUNE_API_KEY", show_default=False,
                                            help="API key (or the SIMPRUNE_API_KEY environment variable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DEFAULT_SERVER = "http://127.0.0.1:8000"


@contextmanager
def _client(server: str, api_key: str | None) -> Iterator[Client]:
    """A client; API errors become one red line on stderr and exit code 2."""
    from simprune.client import ApiError, Client

    try:
        with Client(server, api_key=api_key) as c:
            yield c
    except ApiError as exc:
        console.print(f"[red]error: {exc}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Plain aligned columns on stdout (ids are never shortened, so they can be copied)."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    for row in [columns, *cells]:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# --- submit ------------------------------------------------------------------------------------------------


def _parse_option(raw: str) -> tuple[str, Any]:
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise typer.BadParameter(f"'{raw}': write NAME=VALUE", param_hint="--option")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def _csv(raw: str | None, cast: type = float) -> list[Any] | None:
    return None if raw is None else [cast(v) for v in raw.split(",") if v.strip()]


def _upload_or_reuse(c: Client, path: Path, kind: str, reuse: bool, arch: str | None = None,
                     **upload: Any) -> tuple[dict[str, Any], bool]:
    """(the model or dataset for ``path``, whether it was uploaded now): with ``reuse`` an earlier upload with
    the same content hash (and architecture) is used instead of sending the file again."""
    from simprune.client import sha256_file

    if reuse:
        digest = sha256_file(path)
        found = {"model": lambda: c.find_model(digest, arch), "dataset": lambda: c.find_dataset(digest),
                 "device profile": lambda: c.find_device_profile(digest)}[kind]()
        if found is not None:
            console.print(f"reusing {kind} {found['id']} (same sha256 as {path.name})")
            return found, False
    if kind == "model":
        return c.upload_model(path, arch=str(arch), **upload), True
    if kind == "device profile":
        return c.upload_device_profile(path), True
    return c.upload_dataset(path), True


def _resolve_data(c: Client, ref: str, reuse: bool, uploaded: list[tuple[str, str]]) -> str:
    """A dataset id for ``ref``: an existing file is uploaded (or reused), anything else is taken as an id."""
    path = Path(ref)
    if path.is_file():
        ds, new = _upload_or_reuse(c, path, "dataset", reuse)
        if new:
            uploaded.append(("dataset", ds["id"]))
            console.print(f"dataset {ds['id']}: {ds['samples']} samples, {ds['classes']} classes")
        return ds["id"]
    if ref.startswith("dst_"):
        return ref
    raise typer.BadParameter(f"'{ref}' is neither a file nor a dataset id (dst_...)")


def _check_profile_ref(ref: str | None) -> None:
    """Refuse a ``--profile`` that is neither ``worker``, a file nor a profile id (before anything is uploaded)."""
    if ref is not None and ref != "worker" and not Path(ref).is_file() and not ref.startswith("prf_"):
        raise typer.BadParameter(f"'{ref}' is neither 'worker', a profile file nor a device profile id (prf_...)",
                                 param_hint="--profile")


def _resolve_profile(c: Client, ref: str, reuse: bool, uploaded: list[tuple[str, str]]) -> dict[str, str]:
    """The job fields for ``--profile``: ``worker`` (measured on the worker), a profile file (uploaded or
    reused) or an uploaded profile's id."""
    if ref == "worker":
        return {"latency_profile": "worker"}
    if not Path(ref).is_file():
        return {"device_profile_id": ref}
    prof, new = _upload_or_reuse(c, Path(ref), "device profile", reuse)
    if new:
        uploaded.append(("device profile", prof["id"]))
        console.print(f"device profile {prof['id']}: {prof['arch']} {prof['input_size']} on "
                      f"{prof['device_type']} ({prof['device_name']})")
    return {"device_profile_id": prof["id"]}


def _finetune(epochs: int | None, lr: float | None, batch_size: int | None, optimizer: str | None,
              distill: bool | None, train_samples: int | None, max_steps: int | None,
              extra: str | None) -> dict[str, Any] | None:
    fields = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer, "distill": distill,
              "train_samples": train_samples, "max_steps_per_epoch": max_steps}
    out = {k: v for k, v in fields.items() if v is not None}
    if extra:
        out.update(json.loads(extra))
    return out or None


def _cleanup(c: Client, uploaded: list[tuple[str, str]]) -> None:
    """Delete what this call uploaded (the job was rejected)."""
    from simprune.client import ApiError

    delete = {"model": c.delete_model, "dataset": c.delete_dataset, "device profile": c.delete_device_profile}
    for kind, rid in reversed(uploaded):
        try:
            delete[kind](rid)
            console.print(f"removed the {kind} {rid} uploaded for the rejected job")
        except ApiError as exc:
            console.print(f"[yellow]could not remove {kind} {rid}: {exc}[/]")


def _detail_text(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    parts = [str(d.get("phase", ""))]
    if isinstance(d.get("step"), str):
        parts.append(d["step"])
    if "epoch" in d:
        parts.append(f"epoch {d['epoch']}/{d.get('epochs', '?')}")
    if "done" in d and "total" in d:
        parts.append(f"{d.get('what', 'done')} {d['done']}/{d['total']}")
    if "loss" in d:
        parts.append(f"loss {float(d['loss']):.4f}")
    if "eta_s" in d:
        parts.append(f"ETA {round(float(d['eta_s']))} s")
    return " · ".join(p for p in parts if p)


def follow(c: Client, job_id: str) -> dict[str, Any]:
    """Show a live progress bar from the job's event stream until it ends; the final job."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("queued", total=1.0)
        detail, last_poll = "", 0.0
        for _event, data in c.events(job_id):
            if time.monotonic() - last_poll > 1.0 and data.get("status") == "running":
                detail, last_poll = _detail_text(c.get_job(job_id).get("progress_detail")), time.monotonic()
            desc = f"{data.get('status')}: {data.get('stage') or ''} {detail}".strip()
            bar.update(task, completed=float(data.get("progress") or 0.0), description=desc)
    return c.get_job(job_id)


def _finish(c: Client, job: dict[str, Any], out: Path) -> None:
    if job["status"] != "succeeded":
        console.print(f"[red]job {job['status']}: {job.get('error') or ''}[/]")
        raise typer.Exit(1)
    paths = c.download_all(job["id"], out)
    console.print(f"{len(paths)} artifacts in {out}")


def submit(
    checkpoint: Annotated[Path | None, typer.Argument(exists=True, dir_okay=False, show_default=False,
                                                      help="Checkpoint to prune (or give --model-id).")] = None,
    model_id: Annotated[str | None, typer.Option(help="An uploaded model instead of a checkpoint.")] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture name (see GET /v1/architectures).")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Number of classes (default: from the checkpoint).")] = None,
    input_size: Annotated[str | None, typer.Option(help="C,H,W (default: the architecture's).")] = None,
    mean: Annotated[str | None, typer.Option(help="Per-channel mean, comma separated.")] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std, comma separated.")] = None,
    method: Annotated[str, typer.Option(help="Pruning method (see GET /v1/methods).")] = "l1",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option NAME=VALUE "
                                                     "(VALUE as JSON when it parses); repeatable.")] = None,
    target_flops_reduction: Annotated[float | None, typer.Option(help="Fraction of FLOPs to remove.")] = None,
    pruning_ratio: Annotated[str | None, typer.Option(help="Channel fraction to remove, or 'auto'.")] = None,
    target_speedup: Annotated[float | None, typer.Option(help="Latency target: the pruned model this many times "
                                                         "faster on the profile's device (needs --profile).")] = None,
    profile: Annotated[str | None, typer.Option(help="Device profile of a latency target: a file written by "
                                                "`simprune profile` (uploaded), an uploaded profile's id "
                                                "(prf_...), or 'worker' (measured on the worker).")] = None,
    preset: Annotated[str | None, typer.Option(help="fast, balanced or best (default: best with calibration "
                                                    "data).")] = None,
    allocation: Annotated[str | None, typer.Option(help="uniform, global or sensitivity.")] = None,
    depth: Annotated[bool | None, typer.Option("--depth/--no-depth", help="Drop whole residual blocks too "
                                               "(sensitivity allocation).")] = None,
    round_to: Annotated[int | None, typer.Option(help="Keep channel counts multiples of N.")] = None,
    fold: Annotated[bool | None, typer.Option("--fold/--no-fold", help="Compensation: fold.")] = None,
    lstsq: Annotated[bool | None, typer.Option("--lstsq/--no-lstsq", help="Compensation: lstsq.")] = None,
    bn: Annotated[bool | None, typer.Option("--bn/--no-bn", help="Compensation: BatchNorm re-estimation.")] = None,
    sequential: Annotated[bool | None, typer.Option("--sequential/--no-sequential",
                                                    help="Compensation: group by group.")] = None,
    block_recon: Annotated[bool | None, typer.Option("--block-recon/--no-block-recon",
                                                     help="Compensation: label-free block reconstruction.")] = None,
    output_recon: Annotated[bool | None, typer.Option(
        "--output-recon/--no-output-recon", help="Compensation: label-free output reconstruction.")] = None,
    output_recon_augment: Annotated[str | None, typer.Option(
        help="Output reconstruction's image variations: shift_flip, shift or none.")] = None,
    output_recon_mix: Annotated[str | None, typer.Option(
        help="Output reconstruction's mixing of calibration images: auto, cutmix, mixup or none.")] = None,
    calib: Annotated[str | None, typer.Option(help="Calibration data: a file or a dataset id.")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval", help="Evaluation data: a file or a dataset id.")] = None,
    train: Annotated[str | None, typer.Option(help="Training data: a file or a dataset id.")] = None,
    calib_samples: Annotated[int | None, typer.Option(help="Calibration samples used.")] = None,
    eval_samples: Annotated[int | None, typer.Option(help="Limit evaluation samples.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size of calibration and evaluation.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    export: Annotated[list[str] | None, typer.Option(help="Export format (pt2, onnx, safetensors); "
                                                     "repeatable (default: all).")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="Fine-tune for N epochs (needs --train "
                                                        "or --calib).")] = None,
    finetune_lr: Annotated[float | None, typer.Option(help="Fine-tuning peak learning rate.")] = None,
    finetune_batch_size: Annotated[int | None, typer.Option(help="Fine-tuning batch size.")] = None,
    finetune_optimizer: Annotated[str | None, typer.Option(help="sgd or adamw.")] = None,
    finetune_distill: Annotated[bool | None, typer.Option("--distill/--no-distill",
                                                          help="Distil from the dense model.")] = None,
    train_samples: Annotated[int | None, typer.Option(help="Use only N training samples.")] = None,
    finetune_max_steps: Annotated[int | None, typer.Option(help="At most N steps per epoch.")] = None,
    finetune_json: Annotated[str | None, typer.Option(help="More fine-tuning fields as JSON.")] = None,
    time_limit_s: Annotated[float | None, typer.Option(help="Fail the job after this many seconds.")] = None,
    reuse: Annotated[bool, typer.Option("--reuse/--no-reuse", help="Reuse an upload with the same content "
                                        "hash instead of uploading again.")] = True,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job and download its artifacts.")] = False,
    out: Annotated[Path, typer.Option(help="Where --wait downloads the artifacts.")] = Path("out"),
    server: ServerOpt = DEFAULT_SERVER,
    api_key: KeyOpt = None,
) -> None:
    """Upload a checkpoint and data (or reuse them), submit a pruning job, optionally follow it and download
    the results. An upload made for a job the server rejects is removed again."""
    if (checkpoint is None) == (model_id is None):
        raise typer.BadParameter("give a checkpoint or --model-id (not both)")
    if checkpoint is not None and not arch:
        raise typer.BadParameter("--arch is needed with a checkpoint")
    _check_profile_ref(profile)
    ratio: float | str | None = None
    if pruning_ratio is not None:
        try:
            ratio = pruning_ratio if pruning_ratio == "auto" else float(pruning_ratio)
        except ValueError:
            raise typer.BadParameter(f"must be a number in [0, 1) or 'auto', got {pruning_ratio!r}",
                                     param_hint="--pruning-ratio") from None
    comp = {k: v for k, v in (("fold", fold), ("lstsq", lstsq), ("bn", bn), ("sequential", sequential),
                              ("block_recon", block_recon), ("output_recon", output_recon)) if v is not None}
    fields: dict[str, Any] = {
        "options": dict(_parse_option(o) for o in option or []), "allocation": allocation, "round_to": round_to,
        "preset": preset, "depth": depth, "output_recon_augment": output_recon_augment,
        "output_recon_mix": output_recon_mix,
        "compensation": comp or None, "calib_samples": calib_samples, "eval_samples": eval_samples,
        "batch_size": batch_size, "seed": seed, "exports": export, "time_limit_s": time_limit_s,
        "target_speedup": target_speedup,
        "finetune": _finetune(finetune_epochs, finetune_lr, finetune_batch_size, finetune_optimizer,
                              finetune_distill, train_samples, finetune_max_steps, finetune_json),
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    data_refs = {"calibration_dataset_id": calib, "eval_dataset_id": eval_data, "train_dataset_id": train}
    upload = {"num_classes": num_classes, "input_size": _csv(input_size, int), "mean": _csv(mean), "std": _csv(std)}
    with _client(server, api_key) as c:
        job = _submit(c, checkpoint, model_id, arch, upload, method, target_flops_reduction, ratio, fields,
                      data_refs, reuse, profile)
        if wait:
            _finish(c, follow(c, job["id"]), out)
        typer.echo(job["id"])


def _submit(c: Client, checkpoint: Path | None, model_id: str | None, arch: str | None, upload: dict[str, Any],
            method: str, target: float | None, ratio: float | str | None, fields: dict[str, Any],
            data_refs: dict[str, str | None], reuse: bool, profile: str | None = None) -> dict[str, Any]:
    """Upload (or reuse) the model, data and device profile and submit; on rejection remove what was uploaded,
    then re-raise."""
    from simprune.client import ApiError

    uploaded: list[tuple[str, str]] = []
    try:
        if checkpoint is not None:
            model, new = _upload_or_reuse(c, checkpoint, "model", reuse, arch=arch,
                                          **{k: v for k, v in upload.items() if v is not None})
            if new:
                uploaded.append(("model", model["id"]))
                console.print(f"model {model['id']}: {model['params']:,} params, {model['flops']:,} FLOPs")
            model_id = model["id"]
        for name, ref in data_refs.items():
            if ref:
                fields[name] = _resolve_data(c, ref, reuse, uploaded)
        if profile:
            fields.update(_resolve_profile(c, profile, reuse, uploaded))
        job = c.submit(str(model_id), method, target_flops_reduction=target, pruning_ratio=ratio,
                       idempotency_key=uuid.uuid4().hex, **fields)
    except ApiError:
        _cleanup(c, uploaded)
        raise
    console.print(f"job {job['id']} queued")
    return job


# --- jobs, models, datasets ----------------------------------------------------------------------------------

jobs_app = typer.Typer(help="List, inspect, follow, cancel, download and delete jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Uploaded models.", no_args_is_help=True)
datasets_app = typer.Typer(help="Uploaded datasets.", no_args_is_help=True)
profiles_app = typer.Typer(help="Uploaded device latency profiles (for submit --target-speedup).",
                           no_args_is_help=True)
PROFILE_COLUMNS = ["id", "name", "arch", "input_size", "device_type", "device_name", "created_at"]
JOB_COLUMNS = ["id", "status", "method", "stage", "progress", "model_id", "created_at"]


@jobs_app.command("list")
def jobs_list(status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
              limit: Annotated[int, typer.Option(help="How many (newest first).")] = 50,
              as_json: JsonOpt = False, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """The newest jobs."""
    with _client(server, api_key) as c:
        rows = [j for _, j in zip(range(limit), c.iter_jobs(status=status), strict=False)]
    if as_json:
        _print_json(rows)
    else:
        _table([{**j, "progress": f"{100 * j['progress']:.0f}%"} for j in rows], JOB_COLUMNS)


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False, server: ServerOpt = DEFAULT_SERVER,
              api_key: KeyOpt = None) -> None:
    """One job: status, progress, error, report summary and artifacts."""
    with _client(server, api_key) as c:
        job = c.get_job(job_id)
    if as_json:
        _print_json(job)
        return
    r = job.get("result") or {}
    lines = [f"{job['id']}  {job['status']}  {job['method']}  stage {job['stage'] or '-'}  "
             f"{100 * job['progress']:.0f}%  {_detail_text(job.get('progress_detail'))}".rstrip()]
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    if r:
        acc = (r.get("accuracy_before"), r.get("accuracy_after"))
        lines.append(f"FLOPs -{100 * r['flops_reduction']:.1f}%  params -{100 * r['params_reduction']:.1f}%  "
                     "top-1 " + " -> ".join("n/a" if a is None else f"{100 * a:.2f}%" for a in acc))
    lines += [f"  {a['name']}  {a['size']:,} bytes" for a in job["artifacts"]]
    typer.echo("\n".join(lines))


@jobs_app.command("wait")
def jobs_wait(job_id: str, out: Annotated[Path | None, typer.Option(help="Download the artifacts here.")] = None,
              server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Follow a job with a live progress bar (exit 1 unless it succeeds)."""
    with _client(server, api_key) as c:
        job = follow(c, job_id)
        if out is not None or job["status"] != "succeeded":
            _finish(c, job, out or Path("out"))
    typer.echo(job["status"])


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Cancel a queued or running job."""
    with _client(server, api_key) as c:
        job = c.cancel(job_id)
    typer.echo(f"{job['id']} {job['status']}{' (cancel requested)' if job['status'] == 'running' else ''}")


@jobs_app.command("download")
def jobs_download(job_id: str, names: Annotated[list[str] | None, typer.Argument(
                      help="Artifacts to download (default: all).")] = None,
                  out: Annotated[Path, typer.Option(help="Directory to write to.")] = Path("out"),
                  server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Download a job's artifacts."""
    with _client(server, api_key) as c:
        paths = ([c.download(job_id, n, out / n) for n in names] if names else c.download_all(job_id, out))
    for p in paths:
        typer.echo(str(p))


@jobs_app.command("delete")
def jobs_delete(job_id: str, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Delete a job and its artifacts (cancelling it if it is still queued or running)."""
    with _client(server, api_key) as c:
        c.delete_job(job_id)
    typer.echo(f"deleted {job_id}")


@models_app.command("list")
def models_list(as_json: JsonOpt = False, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Every uploaded model."""
    with _client(server, api_key) as c:
        rows = list(c.iter_models())
    if as_json:
        _print_json(rows)
    else:
        _table(rows, ["id", "arch", "filename", "params", "flops", "sha256"])


@models_app.command("delete")
def models_delete(model_id: str, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Delete an uploaded model."""
    with _client(server, api_key) as c:
        c.delete_model(model_id)
    typer.echo(f"deleted {model_id}")


@datasets_app.command("list")
def datasets_list(as_json: JsonOpt = False, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Every uploaded dataset."""
    with _client(server, api_key) as c:
        rows = list(c.iter_datasets())
    if as_json:
        _print_json(rows)
    else:
        _table(rows, ["id", "filename", "format", "samples", "classes", "sha256"])


@datasets_app.command("delete")
def datasets_delete(dataset_id: str, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Delete an uploaded dataset."""
    with _client(server, api_key) as c:
        c.delete_dataset(dataset_id)
    typer.echo(f"deleted {dataset_id}")


@profiles_app.command("upload")
def profiles_upload(path: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                                         help="A profile file written by `simprune profile`.")],
                    name: Annotated[str | None, typer.Option(help="A label (default: the file name).")] = None,
                    server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Upload a device profile; prints its id."""
    with _client(server, api_key) as c:
        prof = c.upload_device_profile(path, name=name)
    console.print(f"device profile {prof['id']}: {prof['arch']} {prof['input_size']} on {prof['device_type']} "
                  f"({prof['device_name']})")
    typer.echo(prof["id"])


@profiles_app.command("list")
def profiles_list(as_json: JsonOpt = False, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Every uploaded device profile."""
    with _client(server, api_key) as c:
        rows = list(c.iter_device_profiles())
    if as_json:
        _print_json(rows)
    else:
        _table(rows, PROFILE_COLUMNS)


@profiles_app.command("show")
def profiles_show(profile_id: str, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """One device profile with its content, as JSON."""
    with _client(server, api_key) as c:
        _print_json(c.get_device_profile(profile_id))


@profiles_app.command("delete")
def profiles_delete(profile_id: str, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None) -> None:
    """Delete an uploaded device profile."""
    with _client(server, api_key) as c:
        c.delete_device_profile(profile_id)
    typer.echo(f"deleted {profile_id}")


def register(app: typer.Typer) -> None:
    """Add ``submit`` and the ``jobs``, ``models``, ``datasets`` and ``profiles`` groups to the ``simprune``
    CLI."""
    app.command("submit")(submit)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(models_app, name="models")
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(profiles_app, name="profiles")
