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
DetailFn = Callable[[str, dict[str, Any]], None]
"""``detail(stage, info)``: training progress (``epoch``, ``epochs``, ``step``, ``steps``, ``eta_s``, ``loss``,
and after each epoch its record: ``train_loss``, ``top1``, ``seconds``)."""

TRAINING_METHODS = ("dcff", "ssc")
"""Methods that train the network themselves (they need training data and ``finetune.epochs``)."""

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
    allocation: str = "uniform"  # "uniform" | "global" | "sensitivity"
    compensation: dict[str, bool] | None = None  # {"fold":, "lstsq":, "bn":, "sequential":}; None = defaults
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
    detail: DetailFn | None = None,
) -> dict[str, Any]:
    """Run ``job``, write artifacts into ``out_dir`` and return the report (also written as report.json).

    Artifacts: model.pt2, model.onnx, weights.safetensors, plan.json (each verified against the in-memory
    pruned model), report.json, report.html and the plots it embeds. Raises
    :class:`simprune.errors.InputError` for bad input and :class:`simprune.errors.JobCancelled` when
    ``should_cancel()`` turns true between stages or batches. ``detail`` receives per-step/per-epoch
    training progress with an ETA (fine-tuning, dcff, ssc).

    ``method="dcff"`` trains the compact network from the checkpoint (dynamic-coded filter fusion) and
    ``method="ssc"`` converts convs to structured sparse convolutions and trains them; both need
    ``finetune={"train": ..., "epochs": N, ...}``. Fine-tuning checkpoints go to ``finetune.checkpoint_dir``
    (default ``out_dir/finetune_ckpt``, removed after success): a rerun with the same directory resumes.
    """
    import torch

    from simprune.analysis import write_html_report
    from simprune.checkpoint import load_state_dict
    from simprune.data import make_loader, open_dataset
    from simprune.errors import InputError, JobCancelled
    from simprune.evaluate import evaluate, select_device
    from simprune.export import export_all
    from simprune.plan import make_plan
    from simprune.pruning.engine import prune
    from simprune.zoo import build_for_state_dict, get_arch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    notify = progress or (lambda stage, frac: None)

    def at(stage: str, frac: float = 0.0, label: str | None = None) -> None:
        lo, hi = _STAGES[stage]
        notify(label or stage, lo + (hi - lo) * min(max(frac, 0.0), 1.0))

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
    ft = job.finetune or {}
    if job.method in TRAINING_METHODS and not ((ft.get("train") or ft.get("dataset")) and ft.get("epochs")):
        raise InputError(f"{job.method} trains the network: it needs training data and epochs (--train DATA "
                         "--finetune-epochs N; API: finetune.dataset_id and finetune.epochs)")
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

    def timed_eval(stage: str, net: Any) -> float | None:
        """Top-1 of ``net`` on the evaluation set (None without one), timed and reported as ``stage``."""
        if evals is None:
            return None
        checkpoint("evaluation")
        at(stage)
        start = time.perf_counter()
        top1 = evaluate(net, evals, device, lambda done, total: at(stage, done / total if total else 0.0),
                        check_cancel)["top1"]
        timings[stage] = round(time.perf_counter() - start, 4)
        return top1

    acc_before = timed_eval("eval_before", model)

    checkpoint("pruning")
    at("prune")
    dense = model
    ctx = _Ctx(job=job, out_dir=out_dir, device=device, example=example, input_size=input_size, mean=mean,
               std=std, num_classes=num_classes, in_channels=in_channels, evals=evals, at=at,
               check_cancel=check_cancel, detail=detail)
    plan: dict[str, Any] | None
    finetune_report = None
    if job.method in TRAINING_METHODS:
        t = time.perf_counter()
        run = _run_dcff if job.method == "dcff" else _run_ssc
        pruned, report, plan, rebuild = run(dense, ctx)
        timings["prune"] = round(report.pop("setup_s"), 4)
        timings["train"] = round(time.perf_counter() - t - timings["prune"], 4)
    else:
        pruned, report = prune(
            model, example.to(device), job.method,
            target_flops_reduction=job.target_flops_reduction, pruning_ratio=job.pruning_ratio,
            calib=calib, allocation=job.allocation, round_to=job.round_to,
            method_options=job.method_options, compensation=job.compensation, device=device,
            progress=lambda stage, frac: at("prune", frac), should_cancel=check_cancel,
        )
        timings.update({f"prune.{k}": v for k, v in report.pop("timings").items() if k != "total_s"})
        if job.finetune and job.finetune.get("epochs", 0) > 0:
            checkpoint("fine-tuning")
            t = time.perf_counter()
            finetune_report = _finetune(pruned, dense, ctx)
            timings["finetune"] = round(time.perf_counter() - t, 4)
        plan = make_plan(report, arch=job.arch, input_size=input_size, num_classes=num_classes,
                         in_channels=in_channels, mean=mean, std=std)
        rebuild = _rebuild_plan

    acc_after = timed_eval("eval_after", pruned)

    checkpoint("export")
    at("export")
    t = time.perf_counter()
    exports = export_all(
        pruned.cpu(), example, out_dir, formats=job.exports, plan=plan, rebuild=rebuild,
        progress=lambda step, frac: at("export", frac),
    )
    timings["export"] = round(time.perf_counter() - t, 4)
    if finetune_report is None:
        finetune_report = report.pop("finetune", None)
    _drop_default_checkpoints(job, out_dir)

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


@dataclass
class _Ctx:
    """What the method runners share with :func:`run_prune_job`."""

    job: PruneJob
    out_dir: Path
    device: Any
    example: Any
    input_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int | None
    in_channels: int
    evals: Any
    at: Callable[..., None]
    check_cancel: Callable[[], bool]
    detail: DetailFn | None


def _rebuild_plan(plan_path: Path, weights_path: Path) -> Any:
    from simprune.plan import load_pruned

    return load_pruned(plan_path, weights_path)


def _drop_default_checkpoints(job: PruneJob, out_dir: Path) -> None:
    """After success, remove ``out_dir/finetune_ckpt`` (not an artifact); an explicit directory is kept."""
    import shutil

    if not (job.finetune or {}).get("checkpoint_dir"):
        shutil.rmtree(out_dir / "finetune_ckpt", ignore_errors=True)


def _train_setup(ctx: _Ctx, what: str) -> tuple[Any, Any, Path]:
    """Training dataset, :class:`FinetuneConfig` and checkpoint directory from ``job.finetune``."""
    from simprune.data import open_dataset
    from simprune.errors import InputError
    from simprune.finetune import FinetuneConfig

    opts = dict(ctx.job.finetune or {})
    train_path = opts.pop("train", None) or opts.pop("dataset", None)
    if not train_path or int(opts.get("epochs", 0) or 0) < 1:
        raise InputError(f"{what} needs training data and epochs (--train DATA --finetune-epochs N; "
                         "API: finetune.dataset_id and finetune.epochs)")
    train_limit = opts.pop("train_samples", None)
    ckpt_dir = opts.pop("checkpoint_dir", None)
    valid = set(FinetuneConfig.__dataclass_fields__)
    bad = set(opts) - valid
    if bad:
        raise InputError(f"unknown fine-tuning option(s) {sorted(bad)}; valid: {sorted(valid)}")
    try:
        config = FinetuneConfig(**opts)
    except TypeError as exc:
        raise InputError(f"bad fine-tuning options: {exc}") from None
    config.validate()
    train_ds = open_dataset(train_path, mean=ctx.mean, std=ctx.std, input_size=ctx.input_size, train_augment=True,
                            limit=train_limit, seed=ctx.job.seed)
    return train_ds, config, Path(ckpt_dir) if ckpt_dir else ctx.out_dir / "finetune_ckpt"


def _train_progress(ctx: _Ctx, label: str) -> Callable[..., None]:
    def cb(_stage: str, frac: float, info: dict[str, Any] | None = None) -> None:
        ctx.at("finetune", frac, label)
        if ctx.detail is not None and info:
            ctx.detail(label, dict(info))

    return cb


def _finetune(pruned: Any, dense: Any, ctx: _Ctx) -> dict[str, Any]:
    from simprune.finetune import FinetuneConfig, finetune

    train_ds, config, ckpt_dir = _train_setup(ctx, "fine-tuning")
    result = finetune(
        pruned, train_ds, config, teacher=dense if config.distill else None,
        eval_ds=ctx.evals.dataset if ctx.evals is not None else None, device=ctx.device,
        checkpoint_dir=ckpt_dir, progress=_train_progress(ctx, "finetune"), should_cancel=ctx.check_cancel,
    )
    valid = set(FinetuneConfig.__dataclass_fields__)
    return {"history": result.history, "best_epoch": result.best_epoch, "best_top1": result.best_top1,
            "resumed_from": result.resumed_from, "config": {k: getattr(config, k) for k in valid}}


def _per_layer(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    before_by = {r["name"]: r for r in before["per_layer"]}
    rows = []
    for r in after["per_layer"]:
        b = before_by.get(r["name"], r)
        rows.append({"name": r["name"], "type": r["type"],
                     "channels_before": b["out_channels"], "channels_after": r["out_channels"],
                     "in_channels_before": b["in_channels"], "in_channels_after": r["in_channels"],
                     "flops_before": b["flops"], "flops_after": r["flops"]})
    return rows


def _pop_options(opts: dict[str, Any], defaults: dict[str, Any], method: str) -> dict[str, Any]:
    from simprune.errors import InputError

    bad = set(opts) - set(defaults)
    if bad:
        raise InputError(f"unknown option(s) {sorted(bad)} for method '{method}'; valid: {sorted(defaults)}")
    return {k: opts.get(k, v) for k, v in defaults.items()}


def _run_dcff(dense: Any, ctx: _Ctx) -> tuple[Any, dict[str, Any], dict[str, Any], Callable[..., Any]]:
    """DCFF from the checkpoint: uniform per-layer ratios over the fusable convs meeting the target, training."""
    from simprune.methods.dcff import T_END, T_K, T_START, dcff_layer_ratios, dcff_train
    from simprune.errors import InputError
    from simprune.flops import count_model
    from simprune.plan import make_plan

    t0 = time.perf_counter()
    job = ctx.job
    opts = _pop_options(dict(job.method_options), {"t_start": T_START, "t_end": T_END, "k": T_K}, "dcff")
    opts = {k: float(v) for k, v in opts.items()}
    if job.pruning_ratio == "auto":
        raise InputError("dcff has no automatic kept count; give a pruning ratio or a FLOPs target")
    if job.allocation != "uniform":
        raise InputError("dcff supports allocation 'uniform' only (one ratio over the fusable layers)")
    train_ds, config, ckpt_dir = _train_setup(ctx, "dcff")
    example = ctx.example.to(ctx.device)
    before = count_model(dense, example)
    ratio, ratios, skipped = dcff_layer_ratios(
        dense, example, target_flops_reduction=job.target_flops_reduction,
        pruning_ratio=None if job.pruning_ratio is None else float(job.pruning_ratio), round_to=job.round_to)
    setup_s = time.perf_counter() - t0
    ctx.at("prune", 1.0)
    compact, info = dcff_train(
        dense, train_ds, per_layer_ratios=ratios, config=config, teacher=dense if config.distill else None,
        eval_ds=ctx.evals.dataset if ctx.evals is not None else None, device=ctx.device,
        progress=_train_progress(ctx, "train"), should_cancel=ctx.check_cancel, checkpoint_dir=ckpt_dir,
        example_input=example, **opts,
    )
    after = count_model(compact, example)
    layers = [{"layer": n, "channels_before": d["channels"], "keep": sorted(d["keep_final"])}
              for n, d in info["layers"].items()]
    report = {
        "method": "dcff", "method_options": opts, "allocation": "uniform", "pruning_ratio": ratio,
        "target_flops_reduction": job.target_flops_reduction, "round_to": job.round_to, "compensation": None,
        "flops_before": before["flops"], "flops_after": after["flops"],
        "params_before": before["params"], "params_after": after["params"],
        "flops_reduction": 1.0 - after["flops"] / before["flops"],
        "params_reduction": 1.0 - after["params"] / before["params"],
        "per_layer": _per_layer(before, after),
        "skipped_groups": skipped,
        "plan": {"layers": layers},
        "dcff": {"temperatures": info["temperatures"], "final_temperature": info["final_temperature"],
                 "layers": info["layers"]},
        "finetune": info["finetune"],
        "setup_s": setup_s,
    }
    plan = make_plan(report, arch=job.arch, input_size=ctx.input_size, num_classes=ctx.num_classes,
                     in_channels=ctx.in_channels, mean=ctx.mean, std=ctx.std)
    return compact, report, plan, _rebuild_plan


def _ssc_fraction_for(dense: Any, target: float, flops: dict[str, Any], p: int | float,
                      opts: dict[str, Any]) -> float:
    """The k x k window fraction g whose effective FLOPs reduction is closest to ``target`` (bisection).

    A converted conv keeps ``(g * kh * kw + p) / (C_in * kh * kw)`` of its MACs (``flops`` = dense counts).
    """
    from simprune.methods.ssc import ssc_conversions

    layer_flops = {r["name"]: r["flops"] for r in flops["per_layer"]}

    def reduction(frac: float) -> float:
        saved = 0.0
        for name, conv, gi, pi in ssc_conversions(dense, frac, p, aligned=bool(opts["aligned"]),
                                                  skip_stem=bool(opts["skip_stem"])):
            kk = conv.kernel_size[0] * conv.kernel_size[1]
            saved += layer_flops.get(name, 0) * (1.0 - (gi * kk + pi) / (conv.in_channels * kk))
        return saved / flops["flops"]

    lo, hi = 1e-6, 1.0
    best = (hi, reduction(hi))
    for _ in range(30):
        mid = (lo + hi) / 2
        red = reduction(mid)
        if abs(red - target) < abs(best[1] - target):
            best = (mid, red)
        if red > target:
            lo = mid
        else:
            hi = mid
    red_lo = reduction(1e-6)
    if abs(red_lo - target) < abs(best[1] - target):
        best = (1e-6, red_lo)
    return best[0]


def _run_ssc(dense: Any, ctx: _Ctx) -> tuple[Any, dict[str, Any], dict[str, Any], Callable[..., Any]]:
    """Convert the convs to SSC (g, p from options or from the target), train, rewrite into standard ops."""
    import copy

    from simprune.errors import InputError
    from simprune.finetune import finetune
    from simprune.flops import count_model
    from simprune.methods.ssc import convert_to_ssc, export_ssc, load_ssc, ssc_plan, ssc_stats

    t0 = time.perf_counter()
    job = ctx.job
    opts = _pop_options(dict(job.method_options), {"g": None, "p": 0, "aligned": False, "channel_stride": None,
                                                   "reinit": False, "skip_stem": True}, "ssc")
    train_ds, config, ckpt_dir = _train_setup(ctx, "ssc")
    example = ctx.example.to(ctx.device)
    before = count_model(dense, example)
    p = opts["p"]

    def convert(model: Any, g: int | float, reinit: bool = False) -> Any:
        return convert_to_ssc(model, g, p, aligned=bool(opts["aligned"]), channel_stride=opts["channel_stride"],
                              reinit=reinit, skip_stem=bool(opts["skip_stem"]))

    g = opts["g"]
    if g is None:
        if job.pruning_ratio == "auto":
            raise InputError("ssc has no automatic mode; give option g (and p), a ratio or a FLOPs target")
        if job.target_flops_reduction is not None:
            if not 0.0 < job.target_flops_reduction < 1.0:
                raise InputError("target FLOPs reduction must be in (0, 1)")
            g = _ssc_fraction_for(dense, job.target_flops_reduction, before, p, opts)
        elif job.pruning_ratio is not None:
            g = max(1.0 - float(job.pruning_ratio) - (p if isinstance(p, float) else 0.0), 1e-6)
        else:
            raise InputError("ssc needs option g (window of k x k input channels), a ratio or a FLOPs target")
    model = convert(copy.deepcopy(dense), g, reinit=bool(opts["reinit"]))
    setup_s = time.perf_counter() - t0
    ctx.at("prune", 1.0)
    result = finetune(
        model, train_ds, config, teacher=dense if config.distill else None,
        eval_ds=ctx.evals.dataset if ctx.evals is not None else None, device=ctx.device, checkpoint_dir=ckpt_dir,
        progress=_train_progress(ctx, "train"), should_cancel=ctx.check_cancel, stage="ssc",
    )
    stats = ssc_stats(model, example)
    exported = export_ssc(model).eval()
    exp_counts = count_model(exported, example)
    saved_flops = stats["macs_dense"] - stats["macs_effective"]
    flops_after = before["flops"] - saved_flops
    params_after = stats["model_params_effective"]
    per_layer = _per_layer(before, before)
    for row in per_layer:
        layer = stats["layers"].get(row["name"])
        if layer is not None:
            row["flops_after"] = layer["macs_effective"]
            row["density"] = layer["density"]
    report = {
        "method": "ssc", "method_options": {**opts, "g": g}, "allocation": None, "pruning_ratio": job.pruning_ratio,
        "target_flops_reduction": job.target_flops_reduction, "round_to": None, "compensation": None,
        "flops_before": before["flops"], "flops_after": flops_after,
        "params_before": before["params"], "params_after": params_after,
        "flops_reduction": 1.0 - flops_after / before["flops"],
        "params_reduction": 1.0 - params_after / before["params"],
        "flops_exported": exp_counts["flops"], "params_exported": exp_counts["params"],
        "per_layer": per_layer,
        "ssc": stats,
        "notes": ["flops_after/params_after count the SSC layers' effective (non-masked) weights; the export "
                  "uses grouped (+1x1) convs where exact, else dense convs with the mask baked in "
                  "(flops_exported/params_exported)"],
        "finetune": result.to_dict(),
        "setup_s": setup_s,
    }
    plan = ssc_plan(model, arch=job.arch, input_size=ctx.input_size, num_classes=ctx.num_classes,
                    in_channels=ctx.in_channels, mean=ctx.mean, std=ctx.std)
    return exported, report, plan, lambda plan_path, weights_path: load_ssc(plan_path, weights_path)
