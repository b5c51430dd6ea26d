"""Sequential pruning: select, remove and re-fit one group at a time, in execution order.

The one-shot path selects every group's channels on the dense model's feature maps. The sequential path
(He et al., ICCV 2017; ThiNet) walks the groups in execution order: each group's criterion sees the
feature maps of the model as pruned and re-fitted so far (and, as ``extra["target_features"]``, the dense
model's maps for the same images, which the ``recon`` criterion reconstructs), then the group is removed
and its consumers are re-fitted by least squares to the dense outputs before the next group is looked at.
It costs about three forward passes of the sequential calibration images per group, each stopped at the
group's consumers (the rest of the model is not needed for the selection or the re-fit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from simprune.compensation.lstsq import ACT_BUDGET_BYTES, reconstruct_consumers
from simprune.errors import JobCancelled
from simprune.methods.base import ChannelGroup, Criterion, Selection
from simprune.pruning.features import collect_features, first_inputs
from simprune.pruning.groups import GroupSpec
from simprune.pruning.prefix_cache import PrefixCache, largest_output_bytes
from simprune.pruning.surgery import remove_channels

SEQUENTIAL_IMAGES = 1024
"""Calibration images used for each group's selection and local re-fit."""


@torch.no_grad()
def _dense_cache(dense: nn.Module, xs: torch.Tensor) -> PrefixCache | None:
    """A prefix cache of the dense model on ``xs`` when least squares passes all of ``xs`` at once (its
    activation budget), else None."""
    was = dense.training
    dense.eval()
    try:
        return PrefixCache(dense, xs) if largest_output_bytes(dense, xs[:1]) * len(xs) <= ACT_BUDGET_BYTES else None
    finally:
        dense.train(was)


def order_free(crit: Criterion, specs: list[GroupSpec], keep_counts: dict[str, int], model: nn.Module) -> bool:
    """Whether the sequential path must choose exactly what the one-shot path chooses, so that it can be skipped.

    True for a criterion whose scores read only each group's own producing layer and BatchNorm
    (``Criterion.scores_own_weights``: l1, l2, fpgm, bn_scale, random) when no group's producing layer or
    BatchNorm is changed by an earlier pruned group's cut or re-fit (its consumers, their BatchNorms, its
    coupled members): the scores are then the dense model's, and the final least squares re-fits the same
    consumers from the same inputs. This holds for residual networks pruned inside their blocks (each block's
    first layer feeds only the block's second); in a plain chain each layer is the previous group's consumer,
    and the sequential path runs.
    """
    if not crit.scores_own_weights:
        return False
    mods = dict(model.named_modules())
    changed: set[int] = set()
    for spec in specs:
        if keep_counts.get(spec.name, spec.n_channels) >= spec.n_channels:
            continue
        if id(spec.root) in changed or (spec.bn is not None and id(spec.bn) in changed):
            return False
        changed.update(id(c.module) for c in spec.consumers)
        changed.update(id(b) for b in spec.consumer_bns.values())
        changed.update(id(mods[n]) for n in (*spec.members, *spec.depthwise) if n in mods)
    return True


def prune_sequentially(
    work: nn.Module,
    dense: nn.Module,
    dg: Any,
    specs: list[GroupSpec],
    keep_counts: dict[str, int],
    crit: Criterion,
    calib: Any,
    device: torch.device,
    *,
    to_group: Callable[[GroupSpec, dict[str, torch.Tensor]], ChannelGroup],
    select: Callable[[Criterion, ChannelGroup, int, int], Selection],
    fold: Callable[[ChannelGroup, Selection], None] | None,
    n_images: int = SEQUENTIAL_IMAGES,
    lstsq_options: dict[str, Any] | None = None,
    progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Selection]:
    """Prune ``work`` in place group by group (see the module docstring); returns the selections."""
    xs = first_inputs(calib, n_images, device)
    todo = [s for s in specs if keep_counts[s.name] < s.n_channels]
    dense_feats = collect_features(dense, todo, xs, device, should_cancel)
    # the dense model never changes: its passes for the re-fits start from outputs computed once
    dense_cache = _dense_cache(dense, xs)
    opts = {k: v for k, v in (lstsq_options or {}).items() if k in ("ridge", "max_rows", "seed")}
    selections: dict[str, Selection] = {}
    for i, spec in enumerate(todo):
        if should_cancel and should_cancel():
            raise JobCancelled("cancelled during sequential pruning")
        feats = collect_features(work, [spec], xs, device, should_cancel)
        group = to_group(spec, feats)
        if spec.name in dense_feats:
            group.extra["target_features"] = dense_feats[spec.name]
        crit.check(group)
        sel = select(crit, group, keep_counts[spec.name], spec.ch_groups)
        if fold is not None and group.features is not None:
            fold(group, sel)
        remove_channels(dg, spec.root, sel.keep.tolist())
        selections[spec.name] = sel
        if spec.consumers:
            reconstruct_consumers(dense, work, [spec], xs, device, should_cancel, layers="consumers",
                                  dense_cache=dense_cache, **opts)
        dense_feats.pop(spec.name, None)
        if progress is not None:
            progress((i + 1) / len(todo))
    return selections
