"""Least-squares reconstruction of the layers after pruning (He et al. ICCV 2017; ThiNet, Luo et al. 2017).

After channels are removed, each consumer (the layer reading the pruned channels) is re-fitted on
calibration data so that, fed with the *pruned* model's input (which carries the error of every earlier
layer), it reproduces the *dense* model's output of that layer (before its BatchNorm):

    min_W ||X_pruned W + b - Y_dense||^2 + lambda ||W||^2

solved in float64 through the ridge-regularised normal equations. Convs use unfolded patches
(``F.unfold`` with the layer's kernel, stride, padding and dilation); linear layers use their input rows.
The intercept ``b`` goes into the layer's bias, or, for a bias-free layer followed by a BatchNorm, into
that BN's running mean (``BN(y + b) = BN'(y)`` with ``running_mean' = running_mean - b``).

Efficiency: the calibration images (as many as fit an activation budget) go through both models as one
batch. The dense pass stores a seeded sample of output positions per fitted layer; the pruned pass fits
each layer in a forward pre-hook, in execution order, and continues with the corrected weights, so later
layers see the corrected inputs. One dense and one pruned forward pass in all, each stopped after the last
fitted layer (unless BatchNorms are re-estimated, which needs the whole pruned pass). Optionally (``bn=True``)
the BatchNorms that do not follow a re-fitted layer get their running statistics re-estimated in the same
pass (their input distribution changed); the BNs after re-fitted layers keep the dense statistics, which
the re-fitted outputs reproduce.

``layers="consumers"`` re-fits the consumers of the pruned groups; ``layers="all"`` re-fits every
ungrouped conv and linear layer from the first pruned layer on (including the pruned layers themselves on
their kept output channels, given ``out_keep``), which also corrects the drift of the residual stream.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simprune.errors import JobCancelled
from simprune.pruning.features import iter_inputs
from simprune.pruning.groups import GroupSpec
from simprune.pruning.prefix_cache import PrefixCache

ACT_BUDGET_BYTES = 96 * 2**20
"""Largest single activation tensor allowed for the one-batch passes; bounds the number of images used."""
MAX_IMAGES = 2048


class _Stop(Exception):
    pass


def _is_fittable(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    return isinstance(mod, nn.Conv2d | nn.Conv1d) and mod.groups == 1 and mod.padding_mode == "zeros"


def _leaf_order(model: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, str], int]:
    """Leaf modules in execution order, the BN directly after each conv/linear, and the largest
    activation (elements per sample)."""
    order: list[str] = []
    producer: dict[int, str] = {}
    follow_bn: dict[str, str] = {}
    biggest = [int(x[0].numel())]
    hooks = []

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inp: Any, out: Any) -> None:
            if name not in order:
                order.append(name)
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and inp and isinstance(inp[0], torch.Tensor):
                src = producer.get(id(inp[0]))
                if src is not None:
                    follow_bn.setdefault(src, name)
            if isinstance(out, torch.Tensor):
                producer[id(out)] = name
                biggest[0] = max(biggest[0], int(out[0].numel()) if out.dim() else 1)

        return fn

    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0:
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return order, follow_bn, biggest[0]


def _rows_of_output(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows (positions) ``idx`` of a layer output, as (P, C_out)."""
    if out.dim() == 2:
        return out[idx]
    o = out.flatten(2)  # (N, C, L)
    length = o.shape[2]
    return o[idx // length, :, idx % length]


def _n_positions(out: torch.Tensor) -> int:
    return out.shape[0] if out.dim() == 2 else out.shape[0] * out[0, 0].numel()


def _rows_of_input(mod: nn.Module, inp: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The regression inputs of ``mod`` at output positions ``idx`` (sorted): (P, C_in * taps)."""
    if isinstance(mod, nn.Linear):
        return inp.reshape(-1, inp.shape[-1])[idx]
    x = inp
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(-1)
        ks, st, pd, dl = (mod.kernel_size[0], 1), (mod.stride[0], 1), (mod.padding[0], 0), (mod.dilation[0], 1)
    else:
        ks, st, pd, dl = mod.kernel_size, mod.stride, mod.padding, mod.dilation
    if isinstance(pd, str):  # "same" / "valid"
        if pd == "valid":
            pd = (0, 0)
        else:
            pd = tuple((d * (k - 1)) // 2 for k, d in zip(ks, dl, strict=True))
    ho = (x.shape[2] + 2 * pd[0] - dl[0] * (ks[0] - 1) - 1) // st[0] + 1
    wo = (x.shape[3] + 2 * pd[1] - dl[1] * (ks[1] - 1) - 1) // st[1] + 1
    # gather only the sampled windows (im2col of the whole input is far slower), in F.unfold's order
    xp = F.pad(x, (pd[1], pd[1], pd[0], pd[0])) if pd[0] or pd[1] else x
    img, rest = idx // (ho * wo), idx % (ho * wo)
    r0, c0 = (rest // wo) * st[0], (rest % wo) * st[1]
    taps = [xp[img, :, r0 + i * dl[0], c0 + j * dl[1]] for i in range(ks[0]) for j in range(ks[1])]
    return torch.stack(taps, dim=2).reshape(len(idx), -1)  # (P, C_in * kh * kw)


def _solve(x: torch.Tensor, y: torch.Tensor, intercept: bool, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares in float64: ``y ~= x @ w.T + b``; returns (w (C_out, D), b (C_out))."""
    x = x.double()
    y = y.double()
    n = x.shape[0]
    if intercept:
        mx, my = x.mean(0), y.mean(0)
        xc, yc = x - mx, y - my
    else:
        xc, yc = x, y
    a = xc.T @ xc / n
    bvec = xc.T @ yc / n
    lam = ridge * float(torch.diagonal(a).mean().clamp_min(1e-12))
    a.diagonal().add_(lam)
    w = torch.linalg.solve(a, bvec).T  # (C_out, D)
    b = (my - mx @ w.T) if intercept else torch.zeros(y.shape[1], dtype=torch.float64, device=y.device)
    return w, b


def _calibration_inputs(calib: Any, device: torch.device | None, max_images: int) -> torch.Tensor | None:
    """At most ``max_images`` calibration inputs as one batch; None without any."""
    batches = []
    have = 0
    for x in iter_inputs(calib, device):
        batches.append(x)
        have += x.shape[0]
        if have >= max_images:
            break
    if not batches:
        return None
    return torch.cat(batches)[:max_images]


def _fit_targets(order: list[str], pos: dict[str, int], d_mods: dict[str, nn.Module], p_mods: dict[str, nn.Module],
                 specs: list[GroupSpec], layers: str, out_keep: dict[str, list[int]]) -> tuple[list[str], int | None]:
    """The layers to re-fit, in execution order, and the position of the first pruned layer (None: none)."""
    consumer_names = {c.name for s in specs for c in s.consumers}
    root_names = {s.name for s in specs}
    first = min((pos[n] for n in consumer_names | root_names if n in pos), default=None)
    targets: list[str] = []
    for name in order:
        mod = p_mods.get(name)
        dmod = d_mods.get(name)
        if mod is None or dmod is None or not _is_fittable(mod) or not hasattr(mod, "weight"):
            continue
        if layers == "consumers":
            if name not in consumer_names:
                continue
        elif first is None or pos[name] < first:
            continue
        n_out = mod.weight.shape[0]
        if n_out != dmod.weight.shape[0] and name not in out_keep:
            continue
        targets.append(name)
    return targets, first


def _bn_stats_hook(mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
    """Forward pre-hook: set a BatchNorm's running statistics to those of its current input."""
    t = inp[0]
    dims = [0] + list(range(2, t.dim()))
    mod.running_mean.data.copy_(t.mean(dims).to(mod.running_mean.dtype))
    mod.running_var.data.copy_(t.var(dims, unbiased=True).to(mod.running_var.dtype))


@dataclass
class _Refit:
    """One re-fitting: the dense targets sampled in a dense pass, then fitted in a pruned pass."""

    d_mods: dict[str, nn.Module]
    p_mods: dict[str, nn.Module]
    follow_bn: dict[str, str]
    out_keep: dict[str, list[int]]
    ridge: float
    should_cancel: Callable[[], bool] | None
    samples: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    report: dict[str, dict[str, float]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    # dense pass: sampled target rows per layer

    def sample_dense(self, dense: nn.Module, targets: list[str], xs: torch.Tensor, max_rows: int,
                     seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        left = set(targets)  # the pass stops once every target is sampled (later layers are not needed)
        hooks = [self.d_mods[n].register_forward_hook(self._dense_hook(n, gen, max_rows, left)) for n in targets]
        try:
            dense(xs)
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()

    def _dense_hook(self, name: str, gen: torch.Generator, max_rows: int, left: set[str]) -> Callable[..., None]:
        def fn(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
            if name in self.samples:
                return
            self._sample(name, gen, max_rows, out)
            left.discard(name)
            if not left:
                raise _Stop

        return fn

    def _sample(self, name: str, gen: torch.Generator, max_rows: int, out: torch.Tensor) -> None:
        """Sample ``max_rows`` output positions of layer ``name`` (the regression targets)."""
        total = _n_positions(out)
        if total > max_rows:
            idx = torch.randperm(total, generator=gen)[:max_rows].sort().values.to(out.device)
        else:
            idx = torch.arange(total, device=out.device)
        y = _rows_of_output(out, idx)
        if name in self.out_keep and out.shape[1] != self.p_mods[name].weight.shape[0]:
            y = y[:, torch.as_tensor(self.out_keep[name], device=y.device)]
        self.samples[name] = (idx, y.float())

    # pruned pass: fit each layer in a pre-hook, in execution order

    def fit_pruned(self, pruned: nn.Module, targets: list[str], xs: torch.Tensor, bn: bool, pos: dict[str, int],
                   first: int | None) -> None:
        # without BatchNorm re-estimation the pass stops once every sampled target is fitted
        left = {n for n in targets if n in self.samples} if not bn else None
        hooks = [self.p_mods[n].register_forward_pre_hook(self._fit_hook(n, left)) for n in targets]
        if bn:
            refit_bns = {self.follow_bn[n] for n in targets if n in self.follow_bn}
            for n, m in self.p_mods.items():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None \
                        and n not in refit_bns and n in pos and (first is None or pos[n] >= first):
                    hooks.append(m.register_forward_pre_hook(_bn_stats_hook))
        try:
            pruned(xs)
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()

    def _fit_hook(self, name: str, left: set[str] | None) -> Callable[..., None]:
        def fn(mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            if name in self.done or name not in self.samples:
                return
            if self.should_cancel and self.should_cancel():
                raise JobCancelled("cancelled during least-squares reconstruction")
            self.done.add(name)
            self._fit(name, mod, inp[0])
            if left is not None:
                left.discard(name)
                if not left:
                    raise _Stop

        return fn

    def _fit(self, name: str, mod: nn.Module, inp: torch.Tensor) -> None:
        """Re-fit ``mod`` on its sampled rows; keep the old weights when the fit is not better."""
        idx, y = self.samples[name]
        x = _rows_of_input(mod, inp, idx)
        w_old = mod.weight.detach().reshape(mod.weight.shape[0], -1)
        b_old = mod.bias.detach() if mod.bias is not None else None
        bn_mod = self.p_mods.get(self.follow_bn[name]) if name in self.follow_bn else None
        has_bn = isinstance(bn_mod, nn.modules.batchnorm._BatchNorm) and bn_mod.running_mean is not None
        intercept = b_old is not None or has_bn
        yd = y.double()
        pred_old = x.double() @ w_old.double().T + (b_old.double() if b_old is not None else 0.0)
        energy = float(((yd - yd.mean(0)) ** 2).sum().clamp_min(1e-12))
        err_old = float(((pred_old - yd) ** 2).sum()) / energy
        w, b = _solve(x, y, intercept, self.ridge)
        pred = x.double() @ w.T + b
        err_new = float(((pred - yd) ** 2).sum()) / energy
        if not math.isfinite(err_new) or err_new > err_old:
            self.report[name] = {"rel_err_before": err_old, "rel_err_after": err_old, "kept_old_weights": 1.0}
            return
        mod.weight.data.copy_(w.reshape(mod.weight.shape).to(mod.weight.dtype))
        if b_old is not None:
            mod.bias.data.copy_(b.to(mod.bias.dtype))
        elif bn_mod is not None:
            # the re-fitted output reproduces the dense pre-BN output minus the intercept: the BN
            # takes the dense statistics, its mean shifted by the intercept
            mean, var = self._dense_bn_stats(name, self.follow_bn[name])
            bn_mod.running_mean.data.copy_((mean.double() - b).to(bn_mod.running_mean.dtype))
            bn_mod.running_var.data.copy_(var.to(bn_mod.running_var.dtype))
        self.report[name] = {"rel_err_before": err_old, "rel_err_after": err_new}

    def _dense_bn_stats(self, layer: str, bn_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        dbn = self.d_mods[bn_name]
        mean, var = dbn.running_mean.detach(), dbn.running_var.detach()
        if layer in self.out_keep and mean.shape[0] != self.p_mods[bn_name].running_mean.shape[0]:
            k = torch.as_tensor(self.out_keep[layer], device=mean.device)
            mean, var = mean[k], var[k]
        return mean, var


@torch.no_grad()
def reconstruct_consumers(
    dense: nn.Module,
    pruned: nn.Module,
    specs: list[GroupSpec],
    calib: Any,
    device: torch.device | None,
    should_cancel: Callable[[], bool] | None = None,
    *,
    layers: str = "consumers",
    out_keep: dict[str, list[int]] | None = None,
    bn: bool = False,
    ridge: float = 1e-3,
    max_rows: int = 24_000,
    max_images: int = MAX_IMAGES,
    seed: int = 0,
    dense_cache: PrefixCache | None = None,
) -> dict[str, Any]:
    """Re-fit layers of ``pruned`` so that they reproduce ``dense``'s outputs on calibration data (in place).

    ``specs``: the pruned groups (their consumers are re-fitted). ``layers="all"``: every ungrouped conv /
    linear from the first pruned layer on; layers whose output channels were pruned need their kept
    indices in ``out_keep`` (module name -> kept output channels), else they are left alone. ``bn``:
    re-estimate, in the same pass, the BatchNorms that do not directly follow a re-fitted layer. At most
    ``max_rows`` sampled output positions per layer; ``ridge`` is relative to the mean input energy.
    Returns per-layer relative errors before and after the fit, images used, and the seconds taken.
    ``dense_cache``: a :class:`~simprune.pruning.prefix_cache.PrefixCache` of ``dense`` on the same inputs
    (callers that re-fit again and again, such as sequential pruning); the dense pass then starts from the
    cached outputs before the first fitted layer. It is used only when its inputs equal this call's.
    """
    if layers not in ("consumers", "all"):
        raise ValueError("layers must be 'consumers' or 'all'")
    out_keep = out_keep or {}
    xs = _calibration_inputs(calib, device, max_images)
    if xs is None:
        return {"layers": {}, "images": 0}
    dense_was, pruned_was = dense.training, pruned.training
    dense.eval()
    pruned.eval()
    try:
        order, follow_bn, biggest = _leaf_order(pruned, xs)
        _, _, biggest_dense = _leaf_order(dense, xs)
        per_image = 4 * max(biggest, biggest_dense)
        xs = xs[:max(1, min(xs.shape[0], ACT_BUDGET_BYTES // max(1, per_image)))]
        refit = _Refit(dict(dense.named_modules()), dict(pruned.named_modules()), follow_bn, out_keep, ridge,
                       should_cancel)
        pos = {n: i for i, n in enumerate(order)}
        targets, first = _fit_targets(order, pos, refit.d_mods, refit.p_mods, specs, layers, out_keep)
        usable = (dense_cache is not None and targets and dense_cache.model is dense
                  and dense_cache.x.shape == xs.shape and torch.equal(dense_cache.x, xs))
        with dense_cache.reuse_before(targets[0]) if usable else contextlib.nullcontext():  # type: ignore[union-attr]
            refit.sample_dense(dense, targets, xs, max_rows, seed)
        refit.fit_pruned(pruned, targets, xs, bn, pos, first)
    finally:
        dense.train(dense_was)
        pruned.train(pruned_was)
    return {"layers": refit.report, "images": int(xs.shape[0]), "fitted": len(set(targets))}
