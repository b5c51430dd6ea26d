"""How many channels each group keeps: uniform ratios, global ranking, method counts, FLOPs-target search."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from simprune.errors import InputError, JobCancelled
from simprune.methods.base import normalize_scores
from simprune.pruning.groups import FlopsModel, GroupSpec
from simprune.pruning.prefix_cache import PrefixCache, module_name


def _round_keep(spec: GroupSpec, keep: float, round_to: int | None) -> int:
    """Round a kept count to the group's channel chunking and ``round_to``, within [min_keep, n]."""
    step = spec.step(round_to)
    k = int(round(keep / step)) * step if step > 1 else int(round(keep))
    k = max(k, spec.min_keep(round_to), 1)
    return min(k, spec.n_channels)


def uniform_keep(specs: list[GroupSpec], ratio: float, round_to: int | None = None) -> dict[str, int]:
    """Every group removes ``ratio`` of its channels (rounded)."""
    return {s.name: _round_keep(s, s.n_channels * (1.0 - ratio), round_to) for s in specs}


def global_keep(
    specs: list[GroupSpec],
    scores: dict[str, torch.Tensor],
    ratio: float,
    round_to: int | None = None,
    max_layer_ratio: float = 0.9,
) -> dict[str, int]:
    """Rank all channels together by layer-normalised score and remove the lowest ``ratio`` of them.

    No layer loses more than ``max_layer_ratio`` of its channels.
    """
    pooled = []
    for s in specs:
        pooled.append(normalize_scores(scores[s.name]).cpu())
    if not pooled:
        return {}
    allv = torch.cat(pooled)
    n_remove = int(ratio * allv.numel())
    if n_remove <= 0:
        return {s.name: s.n_channels for s in specs}
    thresh = torch.kthvalue(allv, min(n_remove, allv.numel())).values.item()
    out = {}
    for s, v in zip(specs, pooled, strict=True):
        keep = int((v > thresh).sum().item())
        keep = max(keep, math.ceil(s.n_channels * (1 - max_layer_ratio)))
        out[s.name] = _round_keep(s, keep, round_to)
    return out


def search_ratio(
    keep_for_ratio: Callable[[float], dict[str, int]],
    flops_model: FlopsModel,
    flops_before: int,
    target_reduction: float,
    tol: float = 0.005,
) -> tuple[float, dict[str, int]]:
    """Bisect the pruning ratio so the FLOPs reduction lands on ``target_reduction`` (closest found)."""
    if not 0.0 < target_reduction < 1.0:
        raise InputError("target FLOPs reduction must be in (0, 1)")

    def reduction(r: float) -> tuple[float, dict[str, int]]:
        keep = keep_for_ratio(r)
        return 1.0 - flops_model.flops(keep) / flops_before, keep

    lo, hi = 0.0, 0.99
    best = (0.0, keep_for_ratio(0.0), 0.0)
    red_hi, keep_hi = reduction(hi)
    if red_hi < target_reduction - tol:
        raise InputError(
            f"target FLOPs reduction {target_reduction:.1%} is out of reach: at most {red_hi:.1%} is removable "
            "from the prunable layers of this model"
        )
    best = (hi, keep_hi, red_hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        red, keep = reduction(mid)
        if abs(red - target_reduction) < abs(best[2] - target_reduction):
            best = (mid, keep, red)
        if abs(red - target_reduction) <= tol:
            break
        if red < target_reduction:
            lo = mid
        else:
            hi = mid
    return best[0], best[1]


def refine_to_target(
    keep: dict[str, int],
    specs: list[GroupSpec],
    flops_model: FlopsModel,
    flops_before: int,
    target_reduction: float,
    round_to: int | None = None,
    tol: float = 0.005,
    max_steps: int = 500,
) -> dict[str, int]:
    """Nudge single groups by one rounding step until the reduction is within ``tol`` of the target.

    Coarse channel steps (grouped convs, ``round_to``) make the ratio search jump over the target; this
    closes the gap by changing the group whose step lands closest, never going below a group's minimum.
    """
    keep = dict(keep)
    red = 1.0 - flops_model.flops(keep) / flops_before
    for _ in range(max_steps):
        if abs(red - target_reduction) <= tol:
            break
        direction = -1 if red < target_reduction else 1  # remove channels when short of the target
        best: tuple[float, str, int] | None = None
        for s in specs:
            step = s.step(round_to)
            k = keep[s.name] + direction * step
            if k < s.min_keep(round_to) or k > s.n_channels:
                continue
            trial = dict(keep)
            trial[s.name] = k
            r = 1.0 - flops_model.flops(trial) / flops_before
            if best is None or abs(r - target_reduction) < abs(best[0] - target_reduction):
                best = (r, s.name, k)
        if best is None or abs(best[0] - target_reduction) >= abs(red - target_reduction):
            break
        red, keep[best[1]] = best[0], best[2]
    return keep


SENSITIVITY_DEFAULTS: dict[str, object] = {
    "n_images": 256,
    "fractions": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "min_keep_frac": 0.125,
    "local": "lstsq",
    "damage": None,
    "depth": False,
    "measure_rounds": 3,
    "latency_model": None,
    "budget_macs": None,
}
"""``allocation="sensitivity"`` options: calibration images scanned, keep fractions probed per group, the
smallest fraction of a group's channels ever kept, the scan's local compensation ("lstsq" | "mean"), and
``damage``: curves from an earlier scan (a report's ``"sensitivity"``) to reuse instead of scanning again, and
``depth``: also consider dropping whole residual blocks (their drop damage scanned the same way), and
``measure_rounds``: with a latency target and a profile measured on this very device, the chosen pruning is
timed here and the target the search aims at corrected by the measured speedup, at most this many times (0: off;
the profile's single-group savings do not add up exactly and, on a noisy CPU, the search favours the groups
whose savings noise overstated), and ``latency_model``: how a latency target's search reads the profile,
``"pooled"`` or ``"measured"`` (None: pooled for CPU profiles; see :mod:`simprune.pruning.latency_model`), and
``budget_macs``: None, or a model cost in multiply-accumulates per input above which the scan's images are
scaled down in proportion (not below 128; the ``best`` preset's, see :func:`simprune.pruning.phases.budgeted`)."""


def _kl(dense_logp: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean KL(dense || pruned) over the batch."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return float((dense_logp.exp() * (dense_logp - logp)).sum(1).mean())


class _LocalRefit:
    """Least-squares refit of a consumer (conv with ``groups == 1`` or linear) from a subset of its inputs.

    Built from the consumer's dense inputs and outputs; :meth:`forward` gives the consumer's output computed
    from the kept input channels only, with weights (and bias) that best reproduce the dense output.
    """

    def __init__(self, mod: torch.nn.Module, inp: torch.Tensor, out: torch.Tensor, max_rows: int = 16384,
                 ridge: float = 1e-4) -> None:
        self.mod = mod
        if isinstance(mod, torch.nn.Conv2d):
            kh, kw = mod.kernel_size
            cols = torch.nn.functional.unfold(inp.float(), mod.kernel_size, mod.dilation, mod.padding, mod.stride)
            a = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            y = out.float().flatten(2).transpose(1, 2).reshape(-1, out.shape[1])
            self.kk = kh * kw
        else:
            a, y, self.kk = inp.float().reshape(-1, inp.shape[-1]), out.float().reshape(-1, out.shape[-1]), 1
        if a.shape[0] > max_rows:
            idx = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(0))[:max_rows]
            a, y = a[idx.to(a.device)], y[idx.to(y.device)]
        a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)], 1)
        self.gram = (a.T @ a).double()
        self.rhs = (a.T @ y).double()
        self.ridge = ridge * float(self.gram.diagonal().mean())

    def fit(self, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (consumer layout, kept input channels only) and bias refitted for the ``keep`` inputs."""
        cols = (keep.view(-1, 1) * self.kk + torch.arange(self.kk, device=keep.device)).flatten()
        cols = torch.cat([cols.to(self.gram.device), torch.tensor([self.gram.shape[0] - 1], device=self.gram.device)])
        g = self.gram[cols][:, cols]
        g = g + self.ridge * torch.eye(len(cols), dtype=g.dtype, device=g.device)
        sol = torch.linalg.solve(g, self.rhs[cols]).float()  # (cols, out)
        w, b = sol[:-1].T, sol[-1]
        if isinstance(self.mod, torch.nn.Conv2d):
            w = w.reshape(w.shape[0], len(keep), *self.mod.kernel_size)
        return w, b

    def forward(self, x: torch.Tensor, keep: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        xk = x[:, keep.to(x.device)]
        m = self.mod
        if isinstance(m, torch.nn.Conv2d):
            return torch.nn.functional.conv2d(xk, w.to(x.dtype), b.to(x.dtype), m.stride, m.padding, m.dilation)
        return torch.nn.functional.linear(xk, w.to(x.dtype), b.to(x.dtype))


def _refittable(mod: torch.nn.Module) -> bool:
    if isinstance(mod, torch.nn.Conv2d):
        return mod.groups == 1 and isinstance(mod.padding, tuple) and mod.padding_mode == "zeros"
    return isinstance(mod, torch.nn.Linear)


def _group_input(model: torch.nn.Module, mod: torch.nn.Module, kind: str,
                 x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the group's feature map, the output of ``mod``) on ``x``; for a root feature point both are its output."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    if kind == "consumer":
        h = mod.register_forward_hook(lambda m, inp, o, seen=seen: seen.append((inp[0], o)))
    else:
        h = mod.register_forward_hook(lambda m, inp, o, seen=seen: seen.append((o, o)))
    try:
        model(x)
    finally:
        h.remove()
    return seen[0]


def _pruned_hook(mod: torch.nn.Module, kind: str, n_channels: int, keep_idx: torch.Tensor,
                 refit: _LocalRefit | None, mean: torch.Tensor) -> Any:
    """A hook on ``mod`` making the model behave as if only ``keep_idx`` were kept, locally compensated."""
    if refit is not None:
        w, b = refit.fit(keep_idx)
        return mod.register_forward_hook(
            lambda m, inp, o, r=refit, kp=keep_idx, w=w, b=b: r.forward(inp[0], kp, w, b))
    mask = torch.zeros(n_channels, dtype=torch.bool, device=mean.device)
    mask[keep_idx] = True

    def patch(t: torch.Tensor, mask: torch.Tensor = mask, mean: torch.Tensor = mean) -> torch.Tensor:
        shape = [1, -1] + [1] * (t.dim() - 2)
        m = mask.to(t.device).view(shape)
        return torch.where(m, t, mean.to(t.device, t.dtype).view(shape))

    if kind == "consumer":
        return mod.register_forward_pre_hook(lambda m, inp, p=patch: (p(inp[0]),) + tuple(inp[1:]))
    return mod.register_forward_hook(lambda m, inp, o, p=patch: p(o))


def _scan_group(model: torch.nn.Module, modules: dict[str, torch.nn.Module], spec: GroupSpec, x: torch.Tensor,
                dense_logp: torch.Tensor, select: Callable[[GroupSpec, int], torch.Tensor],
                fractions: tuple[float, ...] | list[float], round_to: int | None,
                should_cancel: Callable[[], bool] | None, local: str, cache: PrefixCache) -> dict[int, float]:
    """One group's damage curve ``{kept: KL(dense || pruned)}`` (see :func:`sensitivity_scan`)."""
    kind, _, target = spec.feature_point.partition(":")
    mod = modules[target] if kind == "consumer" else spec.root
    name = target if kind == "consumer" else module_name(model, mod)
    with cache.reuse_before(name or ""):
        return _probe_group(model, spec, x, dense_logp, select, fractions, round_to, should_cancel, local, mod,
                            kind)


def _probe_group(model: torch.nn.Module, spec: GroupSpec, x: torch.Tensor, dense_logp: torch.Tensor,
                 select: Callable[[GroupSpec, int], torch.Tensor], fractions: tuple[float, ...] | list[float],
                 round_to: int | None, should_cancel: Callable[[], bool] | None, local: str, mod: torch.nn.Module,
                 kind: str) -> dict[int, float]:
    feat, cons_out = _group_input(model, mod, kind, x)
    mean = feat.float().mean(dim=[d for d in range(feat.dim()) if d != 1])
    refit = (_LocalRefit(mod, feat, cons_out) if local == "lstsq" and kind == "consumer"
             and _refittable(mod) else None)
    del feat, cons_out
    curve: dict[int, float] = {spec.n_channels: 0.0}
    for f in sorted(set(fractions)):
        if should_cancel and should_cancel():
            raise JobCancelled("cancelled during the sensitivity scan")
        k = _round_keep(spec, spec.n_channels * f, round_to)
        if k >= spec.n_channels or k in curve:
            continue
        keep_idx = select(spec, k).to(mean.device).sort().values
        h = _pruned_hook(mod, kind, spec.n_channels, keep_idx, refit, mean)
        try:
            curve[k] = _kl(dense_logp, model(x))
        finally:
            h.remove()
    return curve


@torch.no_grad()
def sensitivity_scan(
    model: torch.nn.Module,
    specs: list[GroupSpec],
    x: torch.Tensor,
    select: Callable[[GroupSpec, int], torch.Tensor],
    fractions: tuple[float, ...] | list[float] = SENSITIVITY_DEFAULTS["fractions"],  # type: ignore[assignment]
    round_to: int | None = None,
    should_cancel: Callable[[], bool] | None = None,
    local: str = "lstsq",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[int, float]]:
    """Damage of pruning each group alone, for a few kept counts: ``{group: {kept: KL(dense || pruned)}}``.

    The removed channels are chosen by ``select(spec, kept) -> kept indices``. A cheap local compensation
    stands in for the engine's: with ``local="lstsq"`` the group's first consumer (a plain conv or linear) is
    refitted by least squares from the kept inputs to reproduce its dense output; otherwise (``"mean"``, or
    a consumer that cannot be refitted) the removed channels are replaced by their mean, as bias folding
    does. The model is not modified; damages are measured on the logits of ``x``. ``progress(done, total)``
    counts the probes (one per group and fraction) after each group. The part of the model that runs before a
    group's feature point is computed once per group (:class:`~simprune.pruning.prefix_cache.PrefixCache`).
    """
    if local not in ("lstsq", "mean"):
        raise InputError("local compensation of the sensitivity scan must be 'lstsq' or 'mean'")
    was_training = model.training
    model.eval()
    modules = dict(model.named_modules())
    out: dict[str, dict[int, float]] = {}
    try:
        cache = PrefixCache(model, x)
        dense_logp = torch.log_softmax(cache.output.float(), dim=1)
        for i, spec in enumerate(specs):
            out[spec.name] = _scan_group(model, modules, spec, x, dense_logp, select, fractions, round_to,
                                         should_cancel, local, cache)
            if progress is not None:
                progress((i + 1) * len(fractions), len(specs) * len(fractions))
    finally:
        model.train(was_training)
    return out


def _interp_curve(curve: dict[int, float], n: int) -> list[float]:
    """Damage for every kept count 0..n, linear between probed counts, made non-increasing in the kept count."""
    pts = sorted(curve.items())
    dmg = [0.0] * (n + 1)
    for k in range(n + 1):
        if k <= pts[0][0]:
            dmg[k] = pts[0][1] if k == pts[0][0] else float("inf")
            continue
        for (k0, d0), (k1, d1) in zip(pts, pts[1:], strict=False):
            if k0 <= k <= k1:
                dmg[k] = d0 + (d1 - d0) * (k - k0) / (k1 - k0)
                break
    for k in range(n - 1, -1, -1):  # keeping fewer channels never hurts less
        dmg[k] = max(dmg[k], dmg[k + 1])
    return dmg


KNAPSACK_UNITS = 20_000

Option = tuple[Any, float, float]
"""One choice for one knapsack item: ``(payload, damage, saved)``; the payload is a kept count for a group, a
``{group: kept}`` dict or :data:`DROP` for a residual block."""
DROP = "drop"


def _min_damage_choice(options: dict[str, list[Option]], need: float, units: int = KNAPSACK_UNITS) -> dict[str, Any]:
    """One option ``(payload, damage, saved)`` per item, minimising the summed damage with at least ``need``
    saved (multiple-choice knapsack; savings rounded down to ``need / units``, so the constraint holds
    exactly); returns each item's payload. The saved quantity is whatever the caller budgets (FLOPs, predicted
    milliseconds). Ties take the earlier option (callers list them from the least saving: most kept first)."""
    names = list(options)
    if need <= 0:
        return {n: max(o[0] for o in options[n]) if all(isinstance(o[0], int) for o in options[n])
                else options[n][0][0] for n in names}
    unit = need / units
    dp = torch.full((units + 1,), math.inf, dtype=torch.float64)
    dp[0] = 0.0
    back: list[tuple[torch.Tensor, torch.Tensor]] = []  # per item: (option index, predecessor) per state
    ar = torch.arange(units + 1)
    for name in names:
        # suffix minimum of dp (value, index) for the capped state "units"
        rev = torch.flip(dp, [0])
        suf_val, suf_idx = torch.cummin(rev, 0)
        suf_val, suf_idx = torch.flip(suf_val, [0]), units - torch.flip(suf_idx, [0])
        best = torch.full((units + 1,), math.inf, dtype=torch.float64)
        choice = torch.zeros(units + 1, dtype=torch.long)
        pred = torch.zeros(units + 1, dtype=torch.long)
        cand = torch.empty(units + 1, dtype=torch.float64)
        cpred = torch.empty(units + 1, dtype=torch.long)
        for i, (_p, dmg, saved) in enumerate(options[name]):  # streamed: memory O(units) per item
            su = min(units, int(saved // unit))
            cand.fill_(math.inf)
            cand[su:units] = dp[: units - su] + dmg
            cpred[su:units] = ar[: units - su]
            cand[units] = suf_val[units - su] + dmg
            cpred[units] = suf_idx[units - su]
            better = cand < best  # strict: the first minimum wins, as options run from least to most saved
            best = torch.where(better, cand, best)
            choice = torch.where(better, i, choice)
            pred = torch.where(better, cpred, pred)
        dp = best
        back.append((choice, pred))
    out: dict[str, Any] = {}
    state = units
    if not math.isfinite(float(dp[units])):  # within the callers' 1% tolerance but short: save the most reachable
        state = int(torch.nonzero(torch.isfinite(dp)).max())
    for name, (choice, pred) in zip(reversed(names), reversed(back), strict=True):
        out[name] = options[name][int(choice[state])][0]
        state = int(pred[state])
    return out


def _group_options(spec: GroupSpec, curve: dict[int, float], saving: Callable[[GroupSpec, int], float],
                   round_to: int | None, min_keep_frac: float) -> list[Option]:
    """``(kept, damage, saved)`` for every allowed kept count of one group, from most kept to fewest."""
    step = spec.step(round_to)
    lo = max(spec.min_keep(round_to), math.ceil(spec.n_channels * min_keep_frac))
    dmg = _interp_curve(curve, spec.n_channels)
    opts = []
    for k in range(spec.n_channels, lo - 1, -1):
        if k != spec.n_channels and k % step:
            continue
        if not math.isfinite(dmg[k]):
            continue
        opts.append((k, dmg[k], float(saving(spec, k))))
    return opts


def _pareto(opts: list[Option], unit: float) -> list[Option]:
    """The options no other option beats on both damage and (unit-rounded) saving, by increasing saving."""
    bucket: dict[int, Option] = {}
    for o in opts:
        b = int(o[2] // unit) if unit > 0 else 0
        if b not in bucket or o[1] < bucket[b][1]:
            bucket[b] = o
    front: list[Option] = []
    for b in sorted(bucket, reverse=True):  # most saved first: keep an option only if it damages less
        if not front or bucket[b][1] < front[-1][1]:
            front.append(bucket[b])
    return front[::-1]


@dataclass(frozen=True)
class BlockOption:
    """A removable residual block as a knapsack choice: the groups inside it, and dropping it whole."""

    name: str
    groups: tuple[str, ...]
    damage: float
    saved: float


def _block_options(block: BlockOption, group_opts: dict[str, list[Option]], unit: float) -> list[Option]:
    """The joint choices of a block's inner groups (Pareto front, payload ``{group: kept}``), then dropping it."""
    joint: list[Option] = [({}, 0.0, 0.0)]
    for g in block.groups:
        joint = _pareto([(p | {g: k}, d + dg, s + sg) for p, d, s in joint for k, dg, sg in group_opts[g]], unit)
    return joint + [(DROP, block.damage, block.saved)]


def budgeted_keep(
    specs: list[GroupSpec],
    damage: dict[str, dict[int, float]],
    saving: Callable[[GroupSpec, int], float],
    need: float,
    round_to: int | None = None,
    min_keep_frac: float = 0.125,
    blocks: list[BlockOption] | tuple[BlockOption, ...] = (),
) -> tuple[dict[str, int], list[str]]:
    """Kept counts (and dropped blocks) minimising the summed damage with at least ``need`` saved.

    ``saving(spec, kept)`` is what one group saves at a kept count, alone (FLOPs or predicted ms); savings
    are taken as additive. A block of ``blocks`` is one knapsack item choosing between its inner groups'
    counts and being dropped (its ``saved`` then replaces theirs). Returns ``(keep, dropped)``; the groups of a
    dropped block keep all their channels in ``keep``. :class:`InputError` when ``need`` is out of reach.
    """
    options: dict[str, list[Option]] = {
        s.name: _group_options(s, damage[s.name], saving, round_to, min_keep_frac) for s in specs}
    inner = {g for b in blocks for g in b.groups}
    items: dict[str, list[Option]] = {n: o for n, o in options.items() if n not in inner}
    unit = need / KNAPSACK_UNITS if need > 0 else 0.0
    for b in blocks:
        items["block:" + b.name] = _block_options(b, options, unit)
    max_saved = sum(max(o[2] for o in opts) for opts in items.values())
    if max_saved < need * 0.99:
        raise InputError(f"the target is out of reach with at least {min_keep_frac:.0%} of every group kept")
    chosen = _min_damage_choice(items, need)
    keep = {s.name: s.n_channels for s in specs}
    dropped = []
    for item, payload in chosen.items():
        if payload == DROP:
            dropped.append(item.removeprefix("block:"))
        elif isinstance(payload, dict):
            keep.update(payload)
        else:
            keep[item] = int(payload)
    return keep, dropped


def sensitivity_keep(
    specs: list[GroupSpec],
    damage: dict[str, dict[int, float]],
    flops_model: FlopsModel,
    flops_before: int,
    target_reduction: float,
    round_to: int | None = None,
    min_keep_frac: float = 0.125,
) -> dict[str, int]:
    """Kept counts that minimise the summed per-group damage subject to the FLOPs target.

    Solved exactly (up to a 1/20,000 discretisation of the FLOPs to save) as a multiple-choice knapsack by
    dynamic programming (:func:`budgeted_keep`), so the target is met closely. Each group's FLOPs are taken as
    additive (exact when groups do not share layers, as for the inner channels of residual blocks; the final
    count is corrected by :func:`refine_to_target` anyway). No group keeps fewer than ``min_keep_frac`` of its
    channels, nor fewer than its smallest probed count.
    """
    if not 0.0 < target_reduction < 1.0:
        raise InputError("target FLOPs reduction must be in (0, 1)")
    try:
        best, _ = budgeted_keep(specs, damage, lambda s, k: flops_before - flops_model.flops({s.name: k}),
                                target_reduction * flops_before, round_to, min_keep_frac)
    except InputError:
        raise InputError(
            f"target FLOPs reduction {target_reduction:.1%} is out of reach with at least {min_keep_frac:.0%} "
            "of every group kept"
        ) from None
    return refine_to_target(best, specs, flops_model, flops_before, target_reduction, round_to)


@torch.no_grad()
def block_damage_scan(
    model: torch.nn.Module,
    names: list[str],
    x: torch.Tensor,
    should_cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Damage of dropping each residual block alone: ``{block: KL(dense || dropped)}`` on the logits of ``x``,
    the metric of :func:`sensitivity_scan`. The model is left as it was."""
    from simprune.pruning.blocks import temporarily_dropped

    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        cache = PrefixCache(model, x)
        dense_logp = torch.log_softmax(cache.output.float(), dim=1)
        for i, name in enumerate(names):
            if should_cancel and should_cancel():
                raise JobCancelled("cancelled during the block sensitivity scan")
            with cache.reuse_before(name), temporarily_dropped(model, name):
                out[name] = _kl(dense_logp, model(x))
            if progress is not None:
                progress(i + 1, len(names))
    finally:
        model.train(was_training)
    return out


def min_ratio_meeting(keep_for_ratio: Callable[[float], dict[str, int]], ok: Callable[[dict[str, int]], bool],
                      what: str = "target") -> tuple[float, dict[str, int]]:
    """The smallest pruning ratio (bisected) whose kept counts satisfy ``ok``; :class:`InputError` if none does."""
    hi = 0.99
    keep_hi = keep_for_ratio(hi)
    if not ok(keep_hi):
        raise InputError(f"{what} is out of reach: not met even with 99% of every group's channels removed")
    lo, keep_lo = 0.0, keep_for_ratio(0.0)
    if ok(keep_lo):
        return 0.0, keep_lo
    for _ in range(30):
        mid = (lo + hi) / 2
        keep = keep_for_ratio(mid)
        if ok(keep):
            hi, keep_hi = mid, keep
        else:
            lo = mid
    return hi, keep_hi
