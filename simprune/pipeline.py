"""End-to-end job: checkpoint file in, verified artifacts and report out. Used by the CLI and the worker."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ProgressFn = Callable[[str, float], None]
"""``progress(stage, fraction)``: stage name and overall progress in [0, 1]."""

# Share of the overall progress bar each stage covers (the rest is fine-tuning when asked).
_STAGES = {"load": (0.0, 0.03), "eval_before": (0.03, 0.15), "prune": (0.15, 0.55),
           "finetune": (0.55, 0.8), "eval_after": (0.8, 0.88), "export": (0.88, 0.97), "report": (0.97, 1.0)}


@dataclass
class PruneJob:
    """Everything a pruning job needs. Paths are local files; the service resolves its ids to paths."""

    arch: str
    weights: Path
    method: str = "l1"
    target_flops_reduction: float | None = None
    pruning_ratio: float | str | None = None  # a float in [0, 1) or "auto"
    method_options: dict[str, Any] = field(default_factory=dict)
    calib: Path | None = None
    calib_samples: int = 1024
    eval: Path | None = None
    eval_samples: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: tuple[int, ...] | None = None
    round_to: int | None = None
    allocation: str = "uniform"  # "uniform" | "global"
    compensation: dict[str, bool] | None = None  # {"fold":, "lstsq":, "bn":}; None = defaults
    device: str = "auto"
    seed: int = 0
    batch_size: int = 128
    finetune: dict[str, Any] | None = None
    exports: tuple[str, ...] = ("pt2", "onnx", "safetensors")


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import torch_pruning

    import simprune

    return {"simprune": simprune.__version__, "torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def _jsonable(obj: Any) -> Any:
    import torch

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist() if obj.numel() <= 4096 else f"<tensor {tuple(obj.shape)}>"
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def run_prune_job(
    job: PruneJob,
    out_dir: Path,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run ``job``, write artifacts into ``out_dir`` and return the report (also written as report.json).

    Artifacts: model.pt2, model.onnx, weights.safetensors, plan.json (each verified against the in-memory
    pruned model), report.json, report.html and the plots it embeds. Raises
    :class:`simprune.errors.InputError` for bad input and :class:`simprune.errors.JobCancelled` when
    ``should_cancel()`` turns true between stages or batches.
    """
    import torch

    from simprune.analysis import write_html_report
    from simprune.checkpoint import load_state_dict
    from simprune.data import make_loader, open_dataset
    from simprune.errors import InputError, JobCancelled
    from simprune.evaluate import evaluate, select_device
    from simprune.export import export_all
    from simprune.plan import load_pruned, make_plan
    from simprune.pruning.engine import prune
    from simprune.zoo import build_for_state_dict, get_arch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    notify = progress or (lambda stage, frac: None)

    def at(stage: str, frac: float = 0.0) -> None:
        lo, hi = _STAGES[stage]
        notify(stage, lo + (hi - lo) * min(max(frac, 0.0), 1.0))

    def check_cancel() -> bool:
        return bool(should_cancel and should_cancel())

    def checkpoint(stage: str) -> None:
        if check_cancel():
            raise JobCancelled(f"cancelled before {stage}")

    torch.manual_seed(job.seed)
    at("load")
    t = time.perf_counter()
    try:
        info = get_arch(job.arch)
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    device = select_device(job.device)
    state = load_state_dict(job.weights)
    model = build_for_state_dict(job.arch, state, num_classes=job.num_classes, in_channels=job.in_channels)
    num_classes = job.num_classes or _out_features(model)
    in_channels = job.in_channels or info.in_channels
    input_size = tuple(job.input_size or (in_channels, *info.input_size[1:]))
    mean = tuple(job.mean or info.mean)
    std = tuple(job.std or info.std)
    if len(mean) != input_size[0] or len(std) != input_size[0]:
        raise InputError(f"mean/std need {input_size[0]} values (one per input channel)")
    model.to(device).eval()
    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(job.seed))

    def loader(path: Path | None, limit: int | None, train: bool = False) -> Any:
        if path is None:
            return None
        ds = open_dataset(path, mean=mean, std=std, input_size=input_size, limit=limit, seed=job.seed,
                          train_augment=train)
        return make_loader(ds, job.batch_size, shuffle=train, seed=job.seed)

    calib = loader(job.calib, job.calib_samples)
    evals = loader(job.eval, job.eval_samples)
    timings["load"] = round(time.perf_counter() - t, 4)

    def eval_progress(stage: str) -> Callable[[int, int | None], None]:
        return lambda done, total: at(stage, done / total if total else 0.0)

    acc_before = None
    if evals is not None:
        checkpoint("evaluation")
        at("eval_before")
        t = time.perf_counter()
        acc_before = evaluate(model, evals, device, eval_progress("eval_before"), check_cancel)["top1"]
        timings["eval_before"] = round(time.perf_counter() - t, 4)

    checkpoint("pruning")
    at("prune")
    dense = model
    pruned, report = prune(
        model, example.to(device), job.method,
        target_flops_reduction=job.target_flops_reduction, pruning_ratio=job.pruning_ratio,
        calib=calib, allocation=job.allocation, round_to=job.round_to,
        method_options=job.method_options, compensation=job.compensation, device=device,
        progress=lambda stage, frac: at("prune", frac), should_cancel=check_cancel,
    )
    timings.update({f"prune.{k}": v for k, v in report.pop("timings").items() if k != "total_s"})

    finetune_report = None
    if job.finetune and job.finetune.get("epochs", 0) > 0:
        checkpoint("fine-tuning")
        t = time.perf_counter()
        finetune_report = _finetune(pruned, dense, job, mean, std, input_size, evals, device,
                                    out_dir, lambda frac: at("finetune", frac), check_cancel)
        timings["finetune"] = round(time.perf_counter() - t, 4)

    acc_after = None
    if evals is not None:
        checkpoint("evaluation")
        at("eval_after")
        t = time.perf_counter()
        acc_after = evaluate(pruned, evals, device, eval_progress("eval_after"), check_cancel)["top1"]
        timings["eval_after"] = round(time.perf_counter() - t, 4)

    checkpoint("export")
    at("export")
    t = time.perf_counter()
    plan = make_plan(report, arch=job.arch, input_size=input_size, num_classes=num_classes,
                     in_channels=in_channels, mean=mean, std=std)
    exports = export_all(
        pruned.cpu(), example, out_dir, formats=job.exports, plan=plan,
        rebuild=lambda plan_path, weights_path: load_pruned(plan_path, weights_path),
        progress=lambda step, frac: at("export", frac),
    )
    timings["export"] = round(time.perf_counter() - t, 4)

    at("report")
    t = time.perf_counter()
    full = {
        "arch": job.arch,
        "num_classes": num_classes,
        "input_size": list(input_size),
        "device": str(device),
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "accuracy_drop": (acc_before - acc_after) if acc_before is not None and acc_after is not None else None,
        "eval_samples": len(evals.dataset) if evals is not None else None,
        "calib_samples": len(calib.dataset) if calib is not None else None,
        **report,
        "finetune": finetune_report,
        "exports": exports,
        "versions": _versions(),
    }
    plots = _plots(full, out_dir)
    full["plots"] = [p.name for p in plots]
    timings["report"] = round(time.perf_counter() - t, 4)
    timings["total_s"] = round(time.perf_counter() - t0, 4)
    full["timings"] = timings
    full = _jsonable(full)
    (out_dir / "report.json").write_text(json.dumps(full, indent=2))
    write_html_report({**full, "layers": full["per_layer"]}, plots, out_dir / "report.html")
    at("report", 1.0)
    return full


def _out_features(model: Any) -> int | None:
    from torch import nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def _plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    from simprune.analysis import plot_layer_bars, plot_redundancy_bars

    rows = [r for r in report["per_layer"] if r["type"] != "Linear"]
    names = [r["name"] for r in rows]
    plots = [plot_layer_bars(names, [r["channels_before"] for r in rows], [r["channels_after"] for r in rows],
                             out_dir / "channels.png")]
    removed = [1.0 - (r["flops_after"] / r["flops_before"]) if r["flops_before"] else 0.0 for r in rows]
    plots.append(plot_redundancy_bars(names, removed, out_dir / "flops_removed.png",
                                      ylabel="fraction of the layer's FLOPs removed"))
    return plots


def _finetune(pruned: Any, dense: Any, job: PruneJob, mean: tuple[float, ...], std: tuple[float, ...],
              input_size: tuple[int, ...], evals: Any, device: Any, out_dir: Path,
              progress: Callable[[float], None], should_cancel: Callable[[], bool]) -> dict[str, Any]:
    from simprune.data import open_dataset
    from simprune.errors import InputError
    from simprune.finetune import FinetuneConfig, finetune

    opts = dict(job.finetune or {})
    train_path = opts.pop("train", None) or opts.pop("dataset", None)
    if not train_path:
        raise InputError("fine-tuning needs training data (--train / finetune.dataset_id)")
    train_limit = opts.pop("train_samples", None)
    ckpt_dir = opts.pop("checkpoint_dir", None)
    valid = set(FinetuneConfig.__dataclass_fields__)
    bad = set(opts) - valid
    if bad:
        raise InputError(f"unknown fine-tuning option(s) {sorted(bad)}; valid: {sorted(valid)}")
    config = FinetuneConfig(**opts)
    train_ds = open_dataset(train_path, mean=mean, std=std, input_size=input_size, train_augment=True,
                            limit=train_limit, seed=job.seed)
    eval_ds = evals.dataset if evals is not None else None
    result = finetune(
        pruned, train_ds, config, teacher=dense if config.distill else None, eval_ds=eval_ds, device=device,
        checkpoint_dir=Path(ckpt_dir) if ckpt_dir else out_dir / "finetune_ckpt",
        progress=lambda stage, frac, info=None: progress(frac), should_cancel=should_cancel,
    )
    return {"history": result.history, "best_epoch": result.best_epoch, "best_top1": result.best_top1,
            "resumed_from": result.resumed_from, "config": {k: getattr(config, k) for k in valid}}
