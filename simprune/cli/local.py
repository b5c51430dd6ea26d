"""Local commands: ``simprune prune``, ``analyze``, ``profile``, ``methods`` and ``archs``: the engine on local
files, with progress bars. Job fields are validated by :class:`simprune.jobspec.JobSpec` before anything runs."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from simprune.errors import SimpruneError
from simprune.jobspec import CALIB_SAMPLES


def fail(message: str) -> None:
    """Bad input: one clear line on stderr, exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        fail(f"{what} must be comma-separated numbers, e.g. 0.485,0.456,0.406 (got {text!r})")
    return None


def parse_ratio(text: str | None) -> float | str | None:
    if text is None or text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        fail(f"--pruning-ratio must be a number in [0, 1) or 'auto' (got {text!r})")
    return None


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``--option key=value`` pairs; values parsed as JSON when possible (numbers, true/false), else text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--option expects key=value (got {item!r})")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@contextmanager
def progress_bar(title: str):
    """A rich progress bar driven by ``update(stage, fraction)``; stays quiet when stderr is not a TTY."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(title, total=1.0)

        def update(stage: str, fraction: float) -> None:
            bar.update(task, completed=fraction, description=f"{title}: {stage}")

        yield update


def spec_error(exc: ValidationError) -> str:
    """One line naming each invalid job field (``options: method 'm': ...``)."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "job"
        parts.append(f"{loc}: {e['msg']}")
    return "invalid job: " + "; ".join(parts)


def _finetune_fields(epochs: int, train_samples: int | None, distill: bool, batch_size: int,
                     **optional: Any) -> dict[str, Any] | None:
    if epochs <= 0:
        return None
    out = {"epochs": epochs, "train_samples": train_samples, "distill": distill, "batch_size": batch_size}
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def _switches(*, no_fold: bool, no_lstsq: bool, no_bn: bool, sequential: bool | None,
              block_recon: bool | None, output_recon: bool | None = None) -> dict[str, bool] | None:
    """The compensation switches the command line sets explicitly (the rest come from the preset)."""
    given = {"fold": False if no_fold else None, "lstsq": False if no_lstsq else None, "bn": False if no_bn else None,
             "sequential": sequential, "block_recon": block_recon, "output_recon": output_recon}
    return {k: v for k, v in given.items() if v is not None} or None


def _profile_file(profile: str | None) -> Path | None:
    """The profile file named by ``--profile`` (None for 'worker' or none); exit 2 when it is missing."""
    if profile is None or profile == "worker":
        return None
    if not Path(profile).is_file():
        fail(f"profile not found: {profile} (give a file from `simprune profile`, or 'worker')")
    return Path(profile)


def prune(
    weights: Annotated[Path, typer.Option(help="checkpoint: .safetensors or .pt/.pth/.th (weights only), or an "
                                               ".onnx model (then no --arch)")],
    out: Annotated[Path, typer.Option(help="output directory")],
    arch: Annotated[str | None, typer.Option(help="architecture, see `simprune archs` (torchvision/<name>, "
                                                  "timm/<name>); not for .onnx weights")] = None,
    input_size: Annotated[str | None, typer.Option(help="input size C,H,W (default: the architecture's or the "
                                                        "ONNX model's)")] = None,
    method: Annotated[str, typer.Option(help="method, see `simprune methods`")] = "l1",
    target_flops_reduction: Annotated[float | None, typer.Option(help="fraction of FLOPs to remove")] = None,
    target_speedup: Annotated[float | None, typer.Option(
        help="latency target: the pruned model this many times faster on the profile's device (with --profile; "
        "default the worker profile of this machine)")] = None,
    profile: Annotated[str | None, typer.Option(
        help="device profile: a file from `simprune profile`, or 'worker' (this machine's, measured once and "
        "cached); also sets the default --round-to")] = None,
    pruning_ratio: Annotated[str | None, typer.Option(help="fraction of channels per layer, or 'auto'")] = None,
    calib: Annotated[Path | None, typer.Option(help="calibration data: ImageFolder dir/zip or .npz")] = None,
    calib_samples: Annotated[int, typer.Option(help="calibration samples used")] = CALIB_SAMPLES,
    eval: Annotated[Path | None, typer.Option("--eval", help="evaluation data (top-1 before/after)")] = None,
    eval_samples: Annotated[int | None, typer.Option(help="limit evaluation samples")] = None,
    mean: Annotated[str | None, typer.Option(help="normalisation mean, e.g. 0.485,0.456,0.406")] = None,
    std: Annotated[str | None, typer.Option(help="normalisation std")] = None,
    num_classes: Annotated[int | None, typer.Option(help="classes (inferred from the checkpoint)")] = None,
    in_channels: Annotated[int | None, typer.Option(help="input channels (inferred)")] = None,
    round_to: Annotated[int | None, typer.Option(help="keep channel counts multiples of N")] = None,
    preset: Annotated[str | None, typer.Option(help="fast | balanced | best (default: best with --calib, the "
                                                    "data-free path without)")] = None,
    allocation: Annotated[str | None, typer.Option(help="uniform | global | sensitivity (default: the "
                                                        "preset's)")] = None,
    depth: Annotated[bool | None, typer.Option("--depth/--no-depth", help="with sensitivity allocation: also "
                     "drop whole residual blocks where the architecture allows (default: the preset's)")] = None,
    option: Annotated[list[str] | None, typer.Option(help="method option key=value (repeatable)")] = None,
    no_fold: Annotated[bool, typer.Option("--no-fold", help="disable folding compensation")] = False,
    no_lstsq: Annotated[bool, typer.Option("--no-lstsq", help="disable least-squares reconstruction")] = False,
    no_bn: Annotated[bool, typer.Option("--no-bn", help="disable BatchNorm re-estimation")] = False,
    sequential: Annotated[bool | None, typer.Option(
        "--sequential/--no-sequential", help="select and re-fit group by group on the pruned model's features "
        "(default: the preset's)")] = None,
    block_recon: Annotated[bool | None, typer.Option(
        "--block-recon/--no-block-recon", help="label-free block reconstruction after pruning (default: the "
        "preset's)")] = None,
    output_recon: Annotated[bool | None, typer.Option(
        "--output-recon/--no-output-recon", help="label-free fit of the whole pruned model to the dense model's "
        "outputs on the calibration data, last (default: the preset's)")] = None,
    output_recon_augment: Annotated[str | None, typer.Option(
        help="output reconstruction's image variations: shift_flip (default), shift (inputs whose mirror image "
        "is not the same class) or none")] = None,
    output_recon_mix: Annotated[str | None, typer.Option(
        help="output reconstruction's mixing of calibration images: auto (default: cutmix on fits of 48 "
        "passes or more), cutmix, mixup or none")] = None,
    finetune_epochs: Annotated[int, typer.Option(help="fine-tuning epochs after pruning")] = 0,
    train: Annotated[Path | None, typer.Option(help="training data for fine-tuning")] = None,
    train_samples: Annotated[int | None, typer.Option(help="limit training samples")] = None,
    lr: Annotated[float | None, typer.Option(help="fine-tuning learning rate")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 128,
    optimizer: Annotated[str | None, typer.Option(help="sgd | adamw")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="fine-tuning weight decay")] = None,
    distill: Annotated[bool, typer.Option("--distill/--no-distill", help="distil from the dense model")] = True,
    export: Annotated[list[str] | None, typer.Option(help="export format (repeatable): pt2, onnx, safetensors; "
                                                          "default all")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    latency: Annotated[bool | None, typer.Option("--latency/--no-latency", help="time dense vs pruned on this "
                       "device for the report (default: on, unless SIMPRUNE_MEASURE_LATENCY=0)")] = None,
    latency_budget_s: Annotated[float, typer.Option(help="time budget of the latency measurement")] = 60.0,
) -> None:
    """Prune a checkpoint to a FLOPs target, a ratio or a speedup; write verified exports and a report into OUT."""
    from simprune.pipeline import PruneJob

    if not weights.is_file():
        fail(f"checkpoint not found: {weights}")
    is_onnx = weights.suffix.lower() == ".onnx"
    if is_onnx and arch is not None:
        fail("--arch is not used with an .onnx model: the architecture is the file's graph")
    if not is_onnx and arch is None:
        fail("--arch is required for a weights-only checkpoint (see `simprune archs`); or pass an .onnx model")
    size = parse_floats(input_size, "--input-size")
    for p in (calib, eval, train):
        if p is not None and not p.exists():
            fail(f"data not found: {p}")
    profile_path = _profile_file(profile)
    fields: dict[str, Any] = {
        "method": method, "target_flops_reduction": target_flops_reduction, "target_speedup": target_speedup,
        "latency_profile": "worker" if profile == "worker" else None, "depth": depth,
        "measure_latency": latency, "latency_budget_s": latency_budget_s,
        "pruning_ratio": parse_ratio(pruning_ratio), "options": parse_options(option),
        "calib_samples": calib_samples, "eval_samples": eval_samples, "round_to": round_to,
        "allocation": allocation, "batch_size": batch_size, "seed": seed,
        "compensation": _switches(no_fold=no_fold, no_lstsq=no_lstsq, no_bn=no_bn, sequential=sequential,
                                  block_recon=block_recon, output_recon=output_recon), "preset": preset,
        "output_recon_augment": output_recon_augment, "output_recon_mix": output_recon_mix,
        "finetune": _finetune_fields(finetune_epochs, train_samples, distill, batch_size, lr=lr,
                                     optimizer=optimizer, weight_decay=weight_decay),
    }
    if export:
        fields["exports"] = export
    try:
        job = PruneJob.build(
            arch=arch or "onnx", weights=weights, input_size=tuple(int(v) for v in size) if size else None,
            calib=calib, eval=eval, train=train, mean=parse_floats(mean, "--mean"),
            std=parse_floats(std, "--std"), num_classes=num_classes, in_channels=in_channels, device=device,
            profile=profile_path, **fields)
    except ValidationError as exc:
        fail(spec_error(exc))
    _run_and_summarise(job, out, f"{arch or weights.name}/{method}")


def _run_and_summarise(job: Any, out: Path, title: str) -> None:
    """Check and run a :class:`~simprune.pipeline.PruneJob` with a progress bar, print its summary; engine errors
    exit 2 with one line."""
    from simprune.pipeline import run_prune_job

    try:
        job.check()
        with progress_bar(title) as update:
            report = run_prune_job(job, out, progress=update)
    except SimpruneError as exc:
        fail(str(exc))
    except (KeyError, ValueError) as exc:  # bad option values reported by the engine
        fail(str(exc.args[0]) if exc.args else repr(exc))
    _summary(report, out)


def analyze(
    arch: Annotated[str, typer.Option(help="zoo architecture")],
    weights: Annotated[Path, typer.Option(help="checkpoint file")],
    out: Annotated[Path, typer.Option(help="output directory")],
    method: Annotated[str, typer.Option(help="criterion whose similarity is analysed")] = "passive_sim",
    calib: Annotated[Path | None, typer.Option(help="calibration data (data-driven methods)")] = None,
    calib_samples: Annotated[int, typer.Option(help="calibration samples")] = 256,
    mean: Annotated[str | None, typer.Option(help="normalisation mean")] = None,
    std: Annotated[str | None, typer.Option(help="normalisation std")] = None,
    num_classes: Annotated[int | None, typer.Option(help="classes (inferred)")] = None,
    option: Annotated[list[str] | None, typer.Option(help="method option key=value")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Per-layer similarity matrices (.npy), redundancy statistics, suggested ratios and plots."""
    from simprune.analyze import analyze_checkpoint

    if not weights.is_file():
        fail(f"checkpoint not found: {weights}")
    try:
        with progress_bar(f"analyze {arch}") as update:
            summary = analyze_checkpoint(
                arch, weights, out, method=method, calib=calib, calib_samples=calib_samples,
                mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), num_classes=num_classes,
                method_options=parse_options(option), device=device, progress=update)
    except SimpruneError as exc:
        fail(str(exc))
    except (KeyError, ValueError) as exc:
        fail(str(exc.args[0]) if exc.args else repr(exc))
    typer.echo(f"analysed {len(summary['layers'])} layers; suggested ratio {summary['suggested_ratio']:.2f}; "
               f"results in {out}")


def _profile_model(arch: str | None, weights: Path | None) -> tuple[str, Any, tuple[int, ...]]:
    """The model to profile (random weights without a checkpoint: timing does not depend on them), its arch
    name and its input size."""
    from simprune.checkpoint import load_state_dict
    from simprune.zoo import build_for_state_dict, build_model, get_arch

    if weights is not None and not weights.is_file():
        fail(f"checkpoint not found: {weights}")
    if weights is not None and weights.suffix.lower() == ".onnx":
        if arch is not None:
            fail("--arch is not used with an .onnx model: the architecture is the file's graph")
        from simprune.onnx_import import register_onnx

        info = register_onnx(weights)
        return info.name, info.builder(), tuple(info.input_size)
    if arch is None:
        fail("--arch is required (see `simprune archs`), or --weights model.onnx")
    try:
        info = get_arch(arch)
    except KeyError as exc:
        fail(str(exc.args[0]))
    model = build_for_state_dict(arch, load_state_dict(weights)) if weights is not None else build_model(arch)
    return arch, model, tuple(info.input_size)


def profile(
    out: Annotated[Path, typer.Option(help="profile file to write (JSON)")],
    arch: Annotated[str | None, typer.Option(help="architecture, see `simprune archs`")] = None,
    weights: Annotated[Path | None, typer.Option(help="checkpoint (optional: timing does not depend on the "
                                                      "weights), or an .onnx model instead of --arch")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda (auto: CUDA when present)")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's)")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size profiled")] = 1,
    input_size: Annotated[tuple[int, int, int] | None, typer.Option(help="input size C H W (default: the "
                                                                        "architecture's)")] = None,
    budget_s: Annotated[float, typer.Option(help="time budget in seconds")] = 300.0,
    round_to: Annotated[bool, typer.Option("--round-to/--no-round-to", help="measure the fastest channel "
                                                                             "multiple")] = True,
    checks: Annotated[int, typer.Option(help="random prunings measured against the prediction")] = 2,
    dtype: Annotated[str, typer.Option(help="precision timed: float32 | bfloat16 | float16 (as deployed)")] = "float32",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="time in channels_last memory format")] = False,
    repeats: Annotated[int, typer.Option(help="timed rounds per variant at most (fewer when over budget)")] = 60,
) -> None:
    """Measure a device profile on this machine: dense latency, each group at a ladder of widths, each removable
    block dropped, the fixed cost and the fastest channel multiple (for --target-speedup jobs)."""
    from simprune.device import select_device
    from simprune.profiles import save_profile
    from simprune.profiling import PROFILE_DTYPES, ROUND_CANDIDATES, ProfileSettings, measure_profile

    if batch_size < 1 or budget_s <= 0 or checks < 0 or repeats < 3 or (threads is not None and threads < 1):
        fail("--batch-size and --threads must be at least 1, --repeats at least 3, --budget-s positive, "
             "--checks not negative")
    if dtype not in PROFILE_DTYPES:
        fail(f"--dtype {dtype}: use one of {', '.join(PROFILE_DTYPES)}")
    try:
        dev = select_device(device)
        name, model, size = _profile_model(arch, weights)
        size = tuple(input_size) if input_size else size
        settings = ProfileSettings(batch_size=batch_size, budget_s=budget_s, threads=threads, checks=checks,
                                   round_candidates=ROUND_CANDIDATES if round_to else (), dtype=dtype,
                                   channels_last=channels_last, repeats=repeats)
        with progress_bar(f"profile {name} on {dev}") as update:
            result = measure_profile(model, name, size, dev, settings, progress=update)
    except SimpruneError as exc:
        fail(str(exc))
    save_profile(result.profile, out)
    _profile_summary(result, out)


def _profile_summary(result: Any, out: Path) -> None:
    p = result.profile
    env = p.environment
    lines = [f"{p.arch} {tuple(p.input_size)} batch {p.batch_size} on {env.device_name} ({env.device_type}"
             + (f", {env.threads} threads" if env.threads else "") + f", {env.dtype}"
             + (", channels_last" if env.channels_last else "") + f"): dense {p.dense_ms:.3f} ms, fixed "
             f"{p.fixed_ms:.3f} ms",
             f"round_to {p.round_to}" + (" (time per channel relative to the best: "
                                         + ", ".join(f"{m}: {v:.3f}" for m, v in result.round_scores.items())
                                         + ")" if result.round_scores else ""),
             f"{len(p.groups)} groups, {len(p.blocks)} blocks measured in {result.seconds:.1f}s"
             + (f"; {len(result.skipped)} left out (budget or surgery)" if result.skipped else "")
             + "; calibration " + ", ".join(f"{k} x{v}" for k, v in result.calibration.items() if v is not None)]
    for c in result.checks:
        lines.append(f"check: {c['groups_pruned']} groups pruned, {c['blocks_dropped']} blocks dropped: predicted "
                     f"{c['predicted_ms']:.3f} ms ({c['predicted_speedup']:.2f}x), measured {c['measured_ms']:.3f} ms "
                     f"({c['measured_speedup']:.2f}x), error {100 * c['error']:+.1f}%")
    lines.append(f"profile: {out}")
    sys.stdout.write("\n".join(lines) + "\n")


def methods() -> None:
    """List the methods (from the registry) and their options."""
    from simprune.methods import list_methods

    for m in list_methods():
        opts = ", ".join(f"{o['name']}={o['default']}" for o in m["options"])
        needs = "(trains: needs training data) " if m["trains"] else (
            "(needs data) " if m["needs_data"] else "")
        typer.echo(f"{m['name']:<16} {needs}{m['summary']}  [{opts}]")
    from simprune.presets import presets_catalogue

    typer.echo("\npresets (--preset; default: best with --calib, data_free without):")
    for p in presets_catalogue():
        typer.echo(f"{p['name']:<16} {p['summary']}")


def archs(
    search: Annotated[str | None, typer.Option(help="only names containing this text (case-insensitive)")] = None,
) -> None:
    """List architectures: the zoo, every torchvision classifier and every timm model (``verified``: the
    family is covered by simprune's tests). An .onnx file needs no architecture."""
    from simprune.zoo import list_archs

    for a in list_archs(search, libraries=True):
        mark = "verified" if a.verified else "unverified"
        typer.echo(f"{a.name:<44} input {tuple(a.input_size)}  classes {a.num_classes}  {a.family}  {mark}")


def register(app: typer.Typer) -> None:
    """Add the local commands (prune, analyze, profile, methods, archs) to the CLI."""
    for command in (prune, analyze, profile, methods, archs):
        app.command()(command)


def _summary(report: dict[str, Any], out: Path) -> None:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    lines = [
        f"{report['arch']} / {report['method']}: FLOPs {report['flops_before'] / 1e6:.1f}M -> "
        f"{report['flops_after'] / 1e6:.1f}M (-{pct(report['flops_reduction'])}), params "
        f"{report['params_before'] / 1e6:.3f}M -> {report['params_after'] / 1e6:.3f}M "
        f"(-{pct(report['params_reduction'])})",
        f"top-1: {pct(report['accuracy_before'])} -> {pct(report['accuracy_after'])}",
        "exports: " + ", ".join(f"{e['file']} (max diff {e['max_abs_diff']})" for e in report["exports"]),
        f"report: {out / 'report.json'}  ({report['timings']['total_s']:.1f}s)",
    ]
    latency = report.get("latency") or {}
    for r in latency.get("rows", []):
        lines.insert(-1, f"latency {r['runtime']} batch {r['batch']}: {r['dense_ms']:.2f} -> {r['pruned_ms']:.2f} ms "
                         f"({r['speedup']:.2f}x" + (f", efficiency {r['efficiency']:.0%}" if "efficiency" in r else "")
                         + ")")
    if report.get("predicted_speedup") is not None:
        measured = report.get("measured_speedup")
        lines.insert(-1, f"speedup predicted {report['predicted_speedup']:.2f}x, measured "
                         + (f"{measured:.2f}x" if measured is not None else "n/a (profile from another device)"))
    lines[-1:-1] = [f"warning: {w}" for w in report.get("warnings") or []]
    sys.stdout.write("\n".join(lines) + "\n")
