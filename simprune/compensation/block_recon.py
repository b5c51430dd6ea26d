"""Label-free block reconstruction: fit each pruned block to reproduce the dense block's output.

After pruning (and the closed-form compensation), every unit (a residual block, or any module named by the
caller) of the pruned model is adjusted, in execution order, by a bounded number of Adam steps on

    || pruned_block(x_pruned) - dense_block(x_dense) ||^2

where ``x_pruned`` is what the block receives in the pruned model (the blocks before it already re-fitted, so
errors do not accumulate) and ``x_dense`` what the dense block receives, on the calibration images. No labels
are used, as in the block reconstruction of post-training quantization (BRECQ, Li et al. 2021). The model
stays in eval mode (BatchNorm uses its running statistics, its affine parameters are fitted with the
weights). A unit whose error does not fall is restored, so the stage never makes a block worse on the data
it was fitted on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from simprune.compute import autocast, channels_last, to_channels_last, use_bf16
from simprune.errors import JobCancelled
from simprune.folded_norms import folded_batchnorm
from simprune.pruning.features import first_inputs
from simprune.pruning.prefix_cache import PrefixCache, largest_output_bytes

FLOAT_BUDGET = 48_000_000  # floats kept per captured tensor (inputs and targets of one block)
ONE_PASS_BYTES = 256 * 2**20
"""Largest activation allowed for capturing all images in one pass (with the prefix caches); else batches."""


class _Stop(Exception):
    """Raised by a capture hook to cut the forward pass short."""


def _capture(model: nn.Module, unit: nn.Module, x: torch.Tensor, batch: int, want: str) -> torch.Tensor:
    """The input (``want="in"``) or output (``"out"``) of ``unit`` for all of ``x``, stopping each forward there."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], out: Any = None) -> None:
        got.append((args[0] if want == "in" else out).detach())
        raise _Stop

    handle = unit.register_forward_pre_hook(hook) if want == "in" else unit.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                try:
                    model(x[i:i + batch])
                except _Stop:
                    pass
    finally:
        handle.remove()
    return torch.cat(got)


def _execution_order(model: nn.Module, names: list[str], example: torch.Tensor) -> list[str]:
    """``names`` sorted by when their module first runs."""
    mods = dict(model.named_modules())
    order: dict[str, int] = {}

    def seen(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any) -> None:
            order.setdefault(name, len(order))
        return hook

    handles = [mods[n].register_forward_pre_hook(seen(n)) for n in names]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return sorted((n for n in names if n in order), key=order.__getitem__)


def _rel_error(unit: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Mean squared error of ``unit(x)`` against ``y``, relative to the mean square of ``y``."""
    err, ref = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = unit(x[i:i + batch])
            err += float(((out - y[i:i + batch]) ** 2).sum())
            ref += float((y[i:i + batch] ** 2).sum())
    return err / max(ref, 1e-12)


def _fit_unit(unit: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, batch: int,
              seed: int, bf16: bool = False, fast_format: bool = False) -> None:
    """Adam steps on the unit's parameters against the dense targets (random minibatches, cosine decay), in
    channels-last and under bf16 autocast when asked (:mod:`simprune.compute`; the loss is computed in fp32)."""
    params = [p for p in unit.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    scale = max(float((y ** 2).mean()), 1e-12)
    try:
        with torch.enable_grad(), channels_last(unit, enabled=fast_format and x.dim() == 4) as fmt:
            for _ in range(steps):
                idx = torch.randint(len(x), (min(batch, len(x)),), generator=g).to(x.device)
                with autocast(x.device, bf16):
                    out = unit(to_channels_last(x[idx], fmt))
                loss = ((out.float() - y[idx]) ** 2).mean() / scale
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
            p.grad = None


def _is_plain_container(m: nn.Module) -> bool:
    """A bare Sequential/ModuleList whose children are themselves containers (a stage of blocks, not a block)."""
    return type(m) in (nn.Sequential, nn.ModuleList) and any(any(True for _ in c.children()) for c in m.children())


def block_units(model: nn.Module) -> list[str]:
    """The units block reconstruction fits: every module with parameters that is an element of a
    Sequential/ModuleList stage (residual blocks, conv-BN-activation blocks, the layers of a plain conv stack),
    descending through stages of stages. Models with no such structure (a flat graph, e.g. converted from ONNX)
    get their convolutions as units."""
    units: list[str] = []

    def visit(prefix: str, mod: nn.Module) -> None:
        for name, child in mod.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(mod, nn.Sequential | nn.ModuleList) and not _is_plain_container(child):
                if any(True for _ in child.parameters()):
                    units.append(path)
            else:
                visit(path, child)

    visit("", model)
    if not units:
        units = [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    return units


def reconstruct_blocks(
    dense: nn.Module,
    pruned: nn.Module,
    units: list[str],
    calib: Any,
    device: torch.device | None = None,
    *,
    n_images: int = 512,
    steps: int = 200,
    lr: float = 2e-3,
    batch_size: int = 32,
    seed: int = 0,
    bf16: bool | None = False,
    fast_format: bool = True,
    fold_norms: bool = True,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Fit every unit of ``pruned`` named in ``units`` (module paths present in both models) to the dense one's
    output on the first ``n_images`` calibration inputs, ``steps`` Adam steps each: channels-last with
    ``fast_format``; under bf16 autocast with ``bf16`` (None: where the device computes bf16 natively; off by
    default here, on in the pipeline where the device computes bf16 natively: ResNet-56 `best`'s stage 35-39 s
    instead of 41-44 s, same accuracy, BENCHMARKS.md session 20); each unit's convolution-BatchNorm pairs computed
    as one convolution with ``fold_norms`` (:func:`simprune.folded_norms.folded_batchnorm`). Returns per-unit
    relative errors before and after (in fp32), and the time spent. Units without parameters, or absent from
    either model, are skipped."""
    t0 = time.perf_counter()
    x = first_inputs(calib, n_images, device)
    d_mods, p_mods = dict(dense.named_modules()), dict(pruned.named_modules())
    todo = [u for u in units if u in d_mods and u in p_mods and any(True for _ in p_mods[u].parameters())]
    todo = _execution_order(pruned, todo, x) if len(x) else []
    was = dense.training, pruned.training
    dense.eval()
    pruned.eval()
    rows: list[dict[str, Any]] = []
    caches: dict[int, tuple[PrefixCache, PrefixCache]] = {}
    fast = (use_bf16(bf16, x.device), fast_format, fold_norms)
    try:
        for i, name in enumerate(todo):
            if should_cancel is not None and should_cancel():
                raise JobCancelled("cancelled during block reconstruction")
            rows.append(_reconstruct_unit(dense, pruned, d_mods[name], p_mods[name], name, x, steps, lr,
                                          batch_size, seed + i, caches, fast))
            if progress is not None:
                progress(i + 1, len(todo))
    finally:
        dense.train(was[0])
        pruned.train(was[1])
    before = [r["error_before"] for r in rows]
    after = [r["error_after"] for r in rows]
    return {"units": rows, "n_images": len(x), "steps": steps, "lr": lr, "bf16": fast[0],
            "mean_error_before": sum(before) / len(before) if before else None,
            "mean_error_after": sum(after) / len(after) if after else None,
            "seconds": round(time.perf_counter() - t0, 3)}


def _reconstruct_unit(dense: nn.Module, pruned: nn.Module, d_unit: nn.Module, p_unit: nn.Module, name: str,
                      x: torch.Tensor, steps: int, lr: float, batch: int, seed: int,
                      caches: dict[int, tuple[PrefixCache, PrefixCache]],
                      fast: tuple[bool, bool, bool] = (False, False, False)) -> dict[str, Any]:
    """Capture one unit's pruned-model inputs and dense targets (within the float budget), fit, keep if better.

    ``caches`` holds, per image count, prefix caches of both models: units are fitted in execution order, so
    what runs before a unit is final when the unit is reached and is computed once, not once per unit."""
    probe = _capture(pruned, p_unit, x[:1], 1, "in")
    per_image = max(probe[0].numel(), _capture(dense, d_unit, x[:1], 1, "out")[0].numel())
    n = max(1, min(len(x), FLOAT_BUDGET // max(per_image, 1)))
    xs = x[:n]
    if n not in caches:
        caches.clear()  # one image count at a time: the caches hold activations
        with torch.no_grad():
            one = max(largest_output_bytes(m, xs[:1]) for m in (pruned, dense))
            if one * n <= ONE_PASS_BYTES:
                caches[n] = (PrefixCache(pruned, xs), PrefixCache(dense, xs))
    if n in caches:
        with caches[n][0].reuse_before(name):
            inp = _capture(pruned, p_unit, xs, len(xs), "in")
        with caches[n][1].reuse_before(name):
            target = _capture(dense, d_unit, xs, len(xs), "out")
    else:  # activations too large for one pass over all images: batches of 64, each run up to the unit
        inp = _capture(pruned, p_unit, xs, 64, "in")
        target = _capture(dense, d_unit, xs, 64, "out")
    bf16, fast_format, fold_norms = fast
    with folded_batchnorm(p_unit, inp[:2], fold_norms):
        before = _rel_error(p_unit, inp, target, 64)
        saved = {k: v.detach().clone() for k, v in p_unit.state_dict().items()}
        _fit_unit(p_unit, inp, target, steps, lr, batch, seed, bf16, fast_format)
        after = _rel_error(p_unit, inp, target, 64)
    if not math.isfinite(after) or after > before:
        p_unit.load_state_dict(saved)
        after = before
    return {"unit": name, "images": n, "error_before": round(before, 6), "error_after": round(after, 6)}
