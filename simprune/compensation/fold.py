"""Folding removed channels into kept ones (merge compensation), applied before the channels are cut.

For a removed channel ``r`` whose calibration map is approximately ``alpha * F_k + beta`` for a kept
channel ``k``, every consumer computes ``W[:, r] * F_r ~= alpha * W[:, r] * F_k + beta * W[:, r]``. So

* ``W[:, k] += alpha * W[:, r]`` (a conv: every spatial tap; a linear layer: the column);
* the constant ``beta * sum_taps(W[o, r])`` per output channel ``o`` goes into the consumer's bias when it
  has one, else into the BatchNorm right after it (``BN(y + c)`` equals ``BN'(y)`` with
  ``running_mean' = running_mean - c``), else it is dropped and recorded in the returned info.

The pair ``(k, alpha, beta)`` comes from ``Selection.merge`` when the criterion gives one (qsfm,
channel_cluster), else from ``group.features``: the kept channel with the largest absolute Pearson
correlation and the least-squares ``alpha, beta``. ``alpha * F_k + beta`` is the best affine predictor of
``F_r`` from ``F_k`` in mean squared error, so folding never does worse on the calibration data than
dropping the channel (replacing it by zero), even when the correlation is low; ``min_r2`` (the fraction of
``F_r``'s variance the fit must explain) can restrict folding to good fits, ``0.0`` folds always.

Approximation: a 3x3 (or larger) conv with zero padding sees zeros outside the image where the affine
model predicts ``beta``; near the borders the folded constant is therefore slightly off. Strided and
dilated convs are handled the same way (the fold is per input channel, independent of the geometry).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from simprune.methods._similarity import channel_moments, lstsq_fit
from simprune.methods.base import ChannelGroup, Selection

MAX_POSITIONS = 200_000


def merge_map(group: ChannelGroup, selection: Selection,
              max_positions: int = MAX_POSITIONS) -> dict[int, tuple[int, float, float, float]]:
    """``{removed: (kept, alpha, beta, r2)}`` for every removed channel.

    Uses ``selection.merge`` when present (``r2`` from the features when available, else ``nan``); otherwise
    the kept channel most correlated with the removed one on ``group.features``. Empty without either.
    """
    keep = selection.keep.tolist()
    kept_set = set(keep)
    removed = [i for i in range(group.n_channels) if i not in kept_set]
    if not removed or not keep:
        return {}
    m = None
    if group.features is not None and group.features.dim() >= 2 and group.features.shape[1] == group.n_channels:
        m = channel_moments(group.features, max_positions=max_positions)
    out: dict[int, tuple[int, float, float, float]] = {}
    if m is None:
        if selection.merge is None:
            return {}
        return {int(r): (int(k), float(a), float(b), float("nan")) for r, (k, a, b) in selection.merge.items()
                if int(r) not in kept_set and int(k) in kept_set}
    corr = m.correlation()
    dead = m.dead()
    for r in removed:
        if selection.merge is not None and r in selection.merge and int(selection.merge[r][0]) in kept_set:
            k, alpha, beta = selection.merge[r]
            k = int(k)
        else:
            if bool(dead[r]):
                k = keep[int(torch.argmax(m.var[keep]))]
            else:
                k = keep[int(torch.argmax(corr[r, keep].abs()))]
            alpha, beta = lstsq_fit(m, r, k)
        r2 = 1.0 if bool(dead[r]) else float(corr[r, k]) ** 2
        out[int(r)] = (int(k), float(alpha), float(beta), r2)
    return out


def _input_weight(mod: nn.Module) -> torch.Tensor:
    """The consumer's weight viewed as (C_out, C_in, taps)."""
    w = mod.weight.data
    return w.reshape(w.shape[0], w.shape[1], -1)


def _fold_constant(mod: nn.Module, bn: nn.Module | None, const: torch.Tensor) -> str:
    """Add ``const`` (per output channel) to the consumer's output via its bias or the following BN."""
    if getattr(mod, "bias", None) is not None:
        mod.bias.data += const.to(mod.bias)
        return "bias"
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None \
            and bn.running_mean.shape[0] == const.shape[0]:
        bn.running_mean.data -= const.to(bn.running_mean)
        return "bn"
    return "dropped"


@torch.no_grad()
def fold_removed(group: ChannelGroup, selection: Selection, *, min_r2: float = 0.0,
                 max_positions: int = MAX_POSITIONS) -> dict[str, Any]:
    """Fold every removed channel of ``group`` into its merge partner in all consumers (in place).

    Call before the channels are removed. Consumers must take exactly the group's channels as input
    (``groups == 1``); others are skipped. Returns what was done: channels folded, skipped for a poor fit
    (``r2 < min_r2``), and where each consumer's constant went (``bias``, ``bn`` or ``dropped``).
    """
    info: dict[str, Any] = {"folded": 0, "skipped_low_r2": 0, "constant": {}}
    mapping = merge_map(group, selection, max_positions)
    if not mapping:
        return info
    bns = group.extra.get("consumer_bns", {}) if group.extra else {}
    todo = [(r, v) for r, v in sorted(mapping.items()) if not (v[3] == v[3] and v[3] < min_r2)]
    info["skipped_low_r2"] = len(mapping) - len(todo)
    if not todo:
        return info
    for c in group.consumers:
        mod = c.module
        if not hasattr(mod, "weight") or getattr(mod, "groups", 1) != 1:
            continue
        w = _input_weight(mod)
        if w.shape[1] < c.offset + group.n_channels:
            continue
        const = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
        wd = w.double()
        for r, (k, alpha, beta, _) in todo:
            wr = wd[:, c.offset + r]
            wd[:, c.offset + k] += alpha * wr
            const += beta * wr.sum(1)
        mod.weight.data.copy_(wd.reshape(mod.weight.shape).to(mod.weight.dtype))
        info["constant"][c.name] = _fold_constant(mod, bns.get(c.name), const.to(w.dtype))
    info["folded"] = len(todo)
    return info
