"""How many channels each group keeps: uniform ratios, global ranking, method counts, FLOPs-target search."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from simprune.criteria.base import normalize_scores
from simprune.errors import InputError
from simprune.pruning.groups import FlopsModel, GroupSpec


def _round_keep(spec: GroupSpec, keep: float, round_to: int | None) -> int:
    """Round a kept count to the group's channel chunking and ``round_to``, within [min_keep, n]."""
    step = spec.ch_groups * (round_to or 1)
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
            step = s.ch_groups * (round_to or 1)
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
