"""Latency of dense vs pruned models, and how much of the FLOPs reduction turns into real speed.

For each architecture the dense model is pruned to the same FLOPs target by simprune (``simprune.prune``,
L1 criterion) and, side by side, by Torch-Pruning's own ``MetaPruner`` with ``MagnitudeImportance(p=1)``
(its uniform ``pruning_ratio`` bisected until the FLOPs target is met), each with and without
``round_to``. All variants are then timed interleaved (round-robin, order rotated every round, so drift
and background load hit every variant alike) after a warm-up, under ``torch.inference_mode``, with a fixed
``torch.set_num_threads`` (``--threads``, default 1: a single thread is the most stable measurement on a
shared machine; pass the core count for throughput figures). Reported per row:

* ``flops_ratio`` = dense MACs / pruned MACs (counted by ``torch_pruning.utils.count_ops_and_params`` for
  every variant, so the ratios are comparable; simprune's own report is kept in ``report_flops_ratio``),
* ``speedup`` = median dense latency / median pruned latency,
* ``efficiency`` = speedup / flops_ratio (1.0: latency falls exactly as FLOPs do),
* ``efficiency_min``: the same from the fastest run of each model (``latency_min_ms``), which background
  load on a shared machine disturbs less than the median.

Usage::

    python bench/latency.py --out bench_latency.json                   # full run (slow for resnet50 b32)
    python bench/latency.py --quick --out bench_latency.json           # fewer repeats
    python bench/latency.py --archs cifar_resnet56 --batches 1 --channels-last --out r56.json
    python bench/latency.py --device cuda --modes fp32 bf16-cl compile bf16-cl-compile onnxruntime \
        --batches 1 256 --out gpu.json                                  # deployment modes
    python bench/latency.py --archs cifar_resnet56 --target-speedup 2 --threads 2 --out r56_speedup.json

``--modes`` (the deployment modes, each timing dense and pruned in the same rounds): ``fp32`` (eager,
float32: the default), ``bf16-cl`` (weights and input in bfloat16, channels_last, eager), ``compile``
(float32 through ``torch.compile``), ``bf16-compile`` (bfloat16 through ``torch.compile``; with
``--channels-last`` also channels_last), ``bf16-cl-compile`` (bfloat16, channels_last, ``torch.compile``) and
``onnxruntime`` (each model exported with simprune's ONNX exporter and run as an ONNX Runtime session: the CUDA
provider on ``--device cuda`` when onnxruntime has it, inputs copied from the host each call, else the CPU
provider with ``--threads``). Compile time is spent in the warm-up, not timed. ``--device cuda`` on a machine
without CUDA fails with one line (exit code 2).

``--target-speedup S``: per architecture, a device profile is measured in the same run (``--device``, batch
``--profile-batch``, ``--profile-budget-s``, ``--profile-dtype``, ``--profile-channels-last``, ``--profile-repeats``;
:func:`simprune.profiling.measure_profile`: time the precision and layout that will be deployed), the model is pruned
with ``target_speedup=S`` and that profile (variant ``speedup``, with ``predicted_speedup``), and, for
comparison, with simprune's FLOPs-targeted default at the same FLOPs reduction (variant ``flops``, the engine's
default rounding); then dense and both are timed as above. ``--allocation sensitivity --depth`` lets the latency
allocation drop residual blocks (random calibration images: the bench times random-weight models, accuracy is not its
subject).

The process keeps freed memory as the CLI and the worker do (:func:`simprune.allocator.keep_freed_memory`);
``SIMPRUNE_KEEP_FREED_MEMORY=0`` times with glibc's defaults, where a large CPU batch pays page faults on
every activation and the same convolution can take 1x-4x as long from one process to the next.

Prints a markdown table and writes ``{"config": ..., "rows": [...]}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from simprune.allocator import keep_freed_memory
from simprune.errors import InputError

DEFAULT_ARCHS = ("cifar_resnet56", "resnet50")


@dataclass
class Variant:
    """A model to time: the dense baseline or one pruned version of it."""

    name: str  # "dense", "simprune", "torch-pruning"
    round_to: int | None
    model: nn.Module
    macs: float
    params: int
    prune_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def count_macs(model: nn.Module, example: torch.Tensor) -> tuple[float, int]:
    """(MACs, parameters) of ``model`` on ``example`` with Torch-Pruning's counter."""
    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), int(params)


def ignored_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers that must keep their output channels: the classifier, plus the layers the zoo model lists in
    ``simprune_frozen_layers()`` (e.g. the residual-stream convs of an option-A CIFAR ResNet, whose
    parameter-free padding shortcut Torch-Pruning cannot prune through)."""
    frozen = set(getattr(model, "simprune_frozen_layers", list)())
    return [
        m
        for name, m in model.named_modules()
        if name in frozen
        or (isinstance(m, nn.Linear) and m.out_features == num_classes)
        or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)
    ]


def prune_torch_pruning(
    dense: nn.Module,
    example: torch.Tensor,
    num_classes: int,
    target_flops_reduction: float,
    round_to: int | None,
    tol: float = 0.005,
    max_iter: int = 14,
) -> tuple[nn.Module, dict[str, Any]]:
    """Torch-Pruning's MetaPruner (L1 magnitude, uniform per-layer ratio) bisected to the FLOPs target.

    Stops when the MACs are within ``tol`` (fraction of the dense MACs) of the target, as simprune's own
    search does (half a point), else returns the closest of ``max_iter`` tries.
    """
    base_macs, _ = count_macs(dense, example)
    target = base_macs * (1.0 - target_flops_reduction)
    lo, hi = 0.0, 0.95
    best: tuple[float, nn.Module, float] | None = None
    for _ in range(max_iter):
        ratio = (lo + hi) / 2
        model = copy.deepcopy(dense)
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=ignored_layers(model, num_classes),
            round_to=round_to if round_to and round_to > 1 else None,
        )
        pruner.step()
        macs, _ = count_macs(model, example)
        if best is None or abs(macs - target) < abs(best[2] - target):
            best = (ratio, model, macs)
        if abs(macs - target) <= tol * base_macs:
            break
        if macs > target:
            lo = ratio
        else:
            hi = ratio
    assert best is not None
    return best[1], {"pruning_ratio": round(best[0], 4)}


def simprune_available() -> bool:
    """Whether the engine's library call ``simprune.prune`` exists yet."""
    try:
        import simprune

        return callable(getattr(simprune, "prune", None))
    except Exception:  # the bench still measures Torch-Pruning without the engine
        return False


def prune_simprune(
    dense: nn.Module, example: torch.Tensor, target_flops_reduction: float, round_to: int | None, method: str
) -> tuple[nn.Module, dict[str, Any]]:
    """``simprune.prune`` on a copy of ``dense``."""
    import simprune

    pruned, report = simprune.prune(
        copy.deepcopy(dense),
        example,
        method=method,
        target_flops_reduction=target_flops_reduction,
        round_to=round_to,
    )
    extra: dict[str, Any] = {}
    if round_to is None:  # the engine's default: say what it chose
        extra["round_to_auto"] = {"round_to": report.get("round_to"),
                                  "min_channels": report.get("round_to_min_channels")}
    if report.get("flops_before") and report.get("flops_after"):
        extra["report_flops_ratio"] = round(report["flops_before"] / report["flops_after"], 4)
    return pruned, extra


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(
    models: list[nn.Module],
    x: torch.Tensor,
    warmup: int,
    repeats: int,
    budget_s: float,
    device: torch.device,
) -> list[list[float]]:
    """Seconds per forward for each model, measured round-robin with rotating order.

    After ``warmup`` untimed rounds, at most ``repeats`` timed rounds run, fewer (but at least 3) when one
    round takes longer than ``budget_s / repeats``.
    """
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for _ in range(warmup):
            for m in models:
                m(x)
        _sync(device)
        n = repeats
        r = 0
        while r < n:
            order = list(range(len(models)))
            k = r % len(models)
            order = order[k:] + order[:k]
            t_round = time.perf_counter()
            for i in order:
                t0 = time.perf_counter()
                models[i](x)
                _sync(device)
                times[i].append(time.perf_counter() - t0)
            if r == 0:  # adapt the number of rounds to the time budget
                per_round = time.perf_counter() - t_round
                n = max(3, min(repeats, int(budget_s / max(per_round, 1e-9))))
            r += 1
    return times


def build_variants(
    arch: str,
    round_tos: list[int | None],
    methods: list[str],
    target: float,
    sp_method: str,
    log: Callable[[str], None],
) -> tuple[list[Variant], tuple[int, ...], int]:
    """Dense + pruned variants of ``arch`` (random init), the input size (C, H, W) and the class count."""
    from simprune.zoo import build_model, get_arch

    info = get_arch(arch)
    torch.manual_seed(0)
    dense = build_model(arch).eval()
    example = torch.randn(1, *info.input_size)
    macs, params = count_macs(dense, example)
    variants = [Variant("dense", None, dense, macs, params)]
    for method in methods:
        for rt in round_tos:
            t0 = time.perf_counter()
            try:
                if method == "simprune":
                    pruned, extra = prune_simprune(dense, example, target, rt, sp_method)
                else:
                    pruned, extra = prune_torch_pruning(dense, example, info.num_classes, target, rt)
            except InputError as exc:  # e.g. a channel multiple too coarse to reach the target: skip, say why
                log(f"  {arch} {method} round_to={rt}: skipped ({exc})")
                continue
            dt = time.perf_counter() - t0
            pruned = pruned.to("cpu").eval()
            with torch.inference_mode():
                out = pruned(example)
            if out.shape != (1, info.num_classes):
                raise RuntimeError(f"{method} pruned {arch} outputs {tuple(out.shape)}")
            p_macs, p_params = count_macs(pruned, example)
            variants.append(Variant(method, rt, pruned, p_macs, p_params, dt, extra))
            log(f"  {arch} {method} round_to={rt}: FLOPs ratio {macs / p_macs:.3f} (pruned in {dt:.1f}s)")
    return variants, tuple(info.input_size), info.num_classes


def build_speedup_variants(arch: str, args: argparse.Namespace, log: Callable[[str], None]
                           ) -> tuple[list[Variant], tuple[int, ...], int]:
    """Dense, pruned to ``--target-speedup`` with a profile measured here, and the FLOPs-targeted default at the
    same FLOPs reduction."""
    from simprune.profiling import ProfileSettings, measure_profile
    from simprune.zoo import build_model, get_arch

    info = get_arch(arch)
    torch.manual_seed(0)
    dense = build_model(arch).eval()
    example = torch.randn(1, *info.input_size)
    macs, params = count_macs(dense, example)
    t0 = time.perf_counter()
    result = measure_profile(dense, arch, info.input_size, args.device, ProfileSettings(
        batch_size=args.profile_batch, budget_s=args.profile_budget_s, threads=args.threads,
        dtype=args.profile_dtype, channels_last=args.profile_channels_last, repeats=args.profile_repeats))
    profile = result.profile
    log(f"  {arch} profile: {len(profile.groups)} groups, {len(profile.blocks)} blocks, round_to {profile.round_to}, "
        f"{result.seconds:.0f}s; checks " + ", ".join(f"{c['predicted_speedup']:.2f}x predicted / "
                                                       f"{c['measured_speedup']:.2f}x measured" for c in result.checks))
    calib = torch.randn(args.calib_images, *info.input_size) if args.allocation == "sensitivity" else None
    kwargs: dict[str, Any] = {"allocation": args.allocation, "calib": calib}
    if args.depth:
        kwargs["allocation_options"] = {"depth": True}
    t1 = time.perf_counter()
    fast, report, target = prune_to_speedup(dense, example, args, profile, kwargs, log)
    t2 = time.perf_counter()
    reduction = 1.0 - report["flops_after"] / report["flops_before"]
    same_flops, same_extra = prune_simprune(dense, example, reduction, None, args.method)
    t3 = time.perf_counter()
    variants = [Variant("dense", None, dense, macs, params)]
    extra = {"predicted_speedup": round(report.get("predicted_speedup") or 0.0, 4), "profile_s": round(t1 - t0, 1),
             "target_speedup_used": target, "profile_groups": len(profile.groups),
             "profile_blocks": len(profile.blocks),
             "profile_dense_ms": profile.dense_ms, "profile_fixed_ms": profile.fixed_ms,
             "measured_rounds": (report.get("latency_target") or {}).get("measured_rounds"),
             "dropped_blocks": len(report.get("dropped_blocks") or []), "profile_checks": result.checks}
    same = {"target_flops_reduction": round(reduction, 4)} | same_extra
    for name, model, rt, dt, ex in (("speedup", fast, report.get("round_to"), t2 - t1, extra),
                                    ("flops", same_flops, None, t3 - t2, same)):
        model = model.to("cpu").eval()
        p_macs, p_params = count_macs(model, example)
        variants.append(Variant(name, rt, model, p_macs, p_params, dt, ex))
        log(f"  {arch} {name}: FLOPs ratio {macs / p_macs:.3f} (pruned in {dt:.1f}s)")
    return variants, tuple(info.input_size), info.num_classes


def prune_to_speedup(dense: nn.Module, example: torch.Tensor, args: argparse.Namespace, profile: Any,
                     kwargs: dict[str, Any], log: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any], float]:
    """``dense`` pruned to ``--target-speedup`` with ``profile`` (on ``--device``); when the profile says that
    target is out of reach, the next lower of 90%, 80%, ... of it (not below 1.1x), logged: a run on a lent
    machine still measures the speed that can be had."""
    import simprune
    from simprune.errors import InputError

    target = float(args.target_speedup)
    steps = [round(target * f, 3) for f in (1.0, 0.9, 0.8, 0.7, 0.6)]
    for t in [s for s in steps if s >= 1.1] or [target]:
        try:
            fast, report = simprune.prune(copy.deepcopy(dense), example, method=args.method, target_speedup=t,
                                          latency_profile=profile, device=args.device, **kwargs)
            return fast, report, t
        except InputError as exc:
            log(f"  target speedup {t:g}x: {exc}")
            last = exc
    raise last


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by ``args``; returns the json document."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    log = (lambda s: None) if args.silent else (lambda s: print(s, file=sys.stderr, flush=True))
    methods = [m for m in args.methods if m != "simprune" or simprune_available()]
    if "simprune" in args.methods and "simprune" not in methods:
        log("simprune.prune is not available: measuring Torch-Pruning only")
    # "none": explicitly off (1); "auto": the engine's per-device default (None)
    round_tos = [1 if r in ("none", "None", "0", "1") else None if r == "auto" else int(r) for r in args.round_to]
    formats = [(f, mode) for f in (["contiguous", "channels_last"] if args.channels_last else ["contiguous"])
               for mode in args.modes]
    rows: list[dict[str, Any]] = []
    for arch in args.archs:
        log(f"{arch}: pruning")
        if args.target_speedup:
            variants, input_size, _ = build_speedup_variants(arch, args, log)
        else:
            variants, input_size, _ = build_variants(arch, round_tos, methods, args.target, args.method, log)
        for fmt, mode in formats:
            fmt = "channels_last" if "-cl" in mode else fmt
            timed = [v for i, v in enumerate(variants) if i == 0 or not mode.endswith("compile")
                     or not args.compiled_variants or v.name in args.compiled_variants]
            models = [deploy(v.model, mode, device, fmt, input_size) for v in timed]
            for batch in args.batches:
                x = deploy_input(torch.randn(batch, *input_size), mode, device, fmt)
                log(f"{arch} {fmt} {mode} batch {batch}: timing {len(models)} models")
                times = time_round_robin(models, x, args.warmup, args.repeats, args.budget_s, device)
                rows += [_row(arch, batch, fmt, mode, v, ts, variants[0], times[0])
                         for v, ts in zip(timed, times, strict=True)]
                if args.out:  # what is measured survives a run cut short (a time limit on a lent machine)
                    write_doc(args.out, {"config": _config(args, methods), "rows": rows, "partial": True})
            del models
    return {"config": _config(args, methods), "rows": rows}


def _row(arch: str, batch: int, fmt: str, mode: str, v: Variant, ts: list[float], dense: Variant,
         dense_ts: list[float]) -> dict[str, Any]:
    ms, dense_ms = statistics.median(ts) * 1e3, statistics.median(dense_ts) * 1e3
    flops_ratio = dense.macs / v.macs
    speedup = dense_ms / ms
    return {"arch": arch, "batch": batch, "memory_format": fmt, "mode": mode, "variant": v.name,
            "round_to": v.round_to, "gmacs": round(v.macs / 1e9, 4), "params_m": round(v.params / 1e6, 4),
            "flops_ratio": round(flops_ratio, 4), "latency_ms": round(ms, 3),
            "latency_iqr_ms": round(_iqr(ts) * 1e3, 3), "latency_min_ms": round(min(ts) * 1e3, 3), "runs": len(ts),
            "speedup": round(speedup, 4), "speedup_min": round(min(dense_ts) / min(ts), 4),
            "efficiency": round(speedup / flops_ratio, 4),
            "efficiency_min": round(min(dense_ts) / min(ts) / flops_ratio, 4), "prune_s": round(v.prune_s, 2),
            **{k: val for k, val in v.extra.items() if k != "profile_checks"}}


MODES = ("fp32", "bf16-cl", "compile", "bf16-compile", "bf16-cl-compile", "onnxruntime")


def deploy(model: nn.Module, mode: str, device: torch.device, fmt: str,
           input_size: tuple[int, ...]) -> Callable[[Any], Any]:
    """A copy of ``model`` as deployed in ``mode`` (see the module docstring), as a callable on its input."""
    if mode == "onnxruntime":
        return _ort_callable(model, device, input_size)
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    m = copy.deepcopy(model).to(device, memory_format=mf).eval()
    if mode.startswith("bf16"):
        m = m.to(torch.bfloat16)
    return torch.compile(m) if mode.endswith("compile") else m


def deploy_input(x: torch.Tensor, mode: str, device: torch.device, fmt: str) -> Any:
    """The input as ``mode`` takes it: a host numpy array for ONNX Runtime, else a device tensor."""
    if mode == "onnxruntime":
        return x.numpy()
    x = x.to(device).to(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)
    return x.to(torch.bfloat16) if mode.startswith("bf16") else x


def _ort_callable(model: nn.Module, device: torch.device, input_size: tuple[int, ...]) -> Callable[[Any], Any]:
    """``model`` exported to ONNX (dynamic batch) and wrapped as an ONNX Runtime session call."""
    import tempfile

    import onnxruntime as ort

    from simprune.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="bench-ort-") as tmp:
        path = Path(tmp) / "model.onnx"
        example = torch.randn(1, *input_size)
        export_onnx(copy.deepcopy(model).cpu().eval(), example, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.log_severity_level = 3
        cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        sess = ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CUDAExecutionProvider" if cuda else "CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs)
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def _config(args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    cfg = {k: v for k, v in vars(args).items() if k not in ("out", "silent")}
    cfg.update(
        methods_run=methods,
        torch=torch.__version__,
        torch_pruning=tp.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        device_name=_device_name(args.device),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return cfg


def _device_name(device: str) -> str:
    from simprune.latency import device_name

    return device_name(device)


def markdown_table(doc: dict[str, Any]) -> str:
    """The rows as a markdown table."""
    head = (
        "| arch | batch | mem | variant | round_to | GMACs | FLOPs ratio | latency ms (IQR) "
        "| min ms | speedup | efficiency | efficiency (min) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in doc["rows"]:
        dense = r["variant"] == "dense"
        eff = "-" if dense else f"{r['efficiency']:.0%}"
        eff_min = "-" if dense else f"{r['efficiency_min']:.0%}"
        variant = r["variant"] + (f" (pred. {r['predicted_speedup']:.2f}x)" if r.get("predicted_speedup") else "")
        lines.append(
            f"| {r['arch']} | {r['batch']} | {r['memory_format']}"
            f"{'' if r.get('mode', 'fp32') == 'fp32' else ' ' + r['mode']} | {variant} | {_round_label(r)} "
            f"| {r['gmacs']:.3f} | {r['flops_ratio']:.2f} "
            f"| {r['latency_ms']:.2f} ({r['latency_iqr_ms']:.2f}) "
            f"| {r['latency_min_ms']:.2f} | {r['speedup']:.2f} | {eff} | {eff_min} |"
        )
    c = doc["config"]
    lines.append("")
    lines.append(
        f"threads={c['threads']}, torch {c['torch']}, torch-pruning {c['torch_pruning']}, "
        f"{c['processor']} ({c['cpu_count']} CPUs), "
        + (f"target speedup {c['target_speedup']:g}x (profile batch {c['profile_batch']})" if c.get("target_speedup")
           else f"target FLOPs reduction {c['target']:.0%}")
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="zoo architecture names")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--round-to", nargs="+", default=["none", "8"],
                   help="round_to values ('none' = off, 'auto' = the engine's per-device default)")
    p.add_argument(
        "--methods", nargs="+", default=["simprune", "torch-pruning"], choices=["simprune", "torch-pruning"]
    )
    p.add_argument("--method", default="l1", help="simprune criterion")
    p.add_argument("--target", type=float, default=0.5, help="target FLOPs reduction (0.5 = half the FLOPs)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (fixed for the whole run)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--modes", nargs="+", default=["fp32"], choices=list(MODES),
                   help="deployment modes timed (see the module docstring)")
    p.add_argument("--target-speedup", type=float, default=None,
                   help="prune to this speedup with a profile measured in the same run (and the FLOPs default)")
    p.add_argument("--profile-batch", type=int, default=1, help="batch size of that profile")
    p.add_argument("--profile-budget-s", type=float, default=300.0, help="time budget of that profile")
    p.add_argument("--profile-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="precision that profile times (match the deployment mode: bfloat16 for the bf16 modes)")
    p.add_argument("--profile-channels-last", action="store_true", help="that profile in channels_last")
    p.add_argument("--compiled-variants", nargs="*", default=None,
                   help="in the compile modes, time only these variants besides dense (compiling takes a while "
                        "per model), e.g. 'speedup'")
    p.add_argument("--profile-repeats", type=int, default=60, help="timed rounds per profile variant at most")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "global", "sensitivity"],
                   help="allocation of the --target-speedup pruning")
    p.add_argument("--depth", action="store_true", help="with --allocation sensitivity: also drop residual blocks")
    p.add_argument("--calib-images", type=int, default=64, help="random calibration images for sensitivity")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30, help="max timed rounds per (arch, batch)")
    p.add_argument("--budget-s", type=float, default=60.0, help="time budget per (arch, batch, format) cell")
    p.add_argument("--quick", action="store_true", help="warmup 2, at most 7 rounds, 20 s budget per cell")
    p.add_argument("--channels-last", action="store_true", help="also time every model in channels_last")
    p.add_argument("--out", type=Path, default=None, help="json file for the results")
    p.add_argument("--silent", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats, args.budget_s = 2, min(args.repeats, 7), min(args.budget_s, 20.0)
    if not 0.0 < args.target < 1.0 or math.isnan(args.target):
        p.error("--target must be in (0, 1)")
    if args.target_speedup is not None and not 1.0 < args.target_speedup <= 20.0:
        p.error("--target-speedup must be in (1, 20]")
    if args.depth and args.allocation != "sensitivity":
        p.error("--depth needs --allocation sensitivity")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.exit(2, f"latency.py: --device {args.device}: CUDA is not available on this machine; use --device cpu\n")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: measure, print the markdown table, write ``--out``."""
    args = parse_args(argv)
    keep_freed_memory()  # as the CLI and the worker (whose job reports time models) run
    doc = measure(args)
    table = markdown_table(doc)
    print(table)
    if args.out is not None:
        write_doc(args.out, {**doc, "markdown": table})
    return 0


def _round_label(row: dict[str, Any]) -> str:
    """The table's round_to cell: '-' for none, 'auto: 16 from 128 ch' for the engine's default."""
    auto = row.get("round_to_auto")
    if auto is not None:
        chosen = auto.get("round_to")
        if auto.get("min_channels"):
            return f"auto: {chosen} from {auto['min_channels']} ch"
        return f"auto: {chosen or '-'}"
    return "-" if row["round_to"] in (None, 1) else str(row["round_to"])


def write_doc(out: Path, doc: dict[str, Any]) -> None:
    """Write the json document (its folder created), replacing the file atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(out)


if __name__ == "__main__":
    raise SystemExit(main())
