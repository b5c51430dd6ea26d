"""``qsfm``: quantified similarity of feature maps (after Wang et al., arXiv 2105.06052 / IEEE IoT J. 2022).

The published formula was not available; this module implements the formulation documented in the
project's METHODS.md:

* ``F_j``: channel j's calibration feature maps as the next layer receives them (``group.features``,
  (N, C, H, W) or (N, C)), flattened over N*H*W positions (seeded sub-sample of at most ``max_positions``).
* Similarity of channels a, b: Pearson correlation of their centred flattened maps (``corr``).
* Iterative removal: a channel's redundancy is ``max |corr|`` with the other *remaining* channels; remove
  the most redundant one (ties: smaller variance first, then higher index), re-evaluate, stop at
  ``n_keep``. A constant (dead) channel has zero variance and is removed first: it is exactly
  ``0 * F_kept + mean``.
* Compensation map (``Selection.merge``): each removed channel -> the kept channel it correlates with most,
  with ``alpha, beta`` of the least-squares fit ``F_removed ~= alpha * F_kept + beta`` on the calibration
  positions (``alpha = cov / var_kept``, ``beta = mean_removed - alpha * mean_kept``).
* ``scores``: ``1 - r_j^2`` where ``r_j`` is the channel's redundancy at the moment the iterative removal
  takes it out (dead channels 0, the last channel the highest). ``r_j^2`` is the fraction of the channel's
  variance that its best remaining partner explains, so the score is the fraction that folding would
  lose: scale-free and comparable across layers. Redundancies never increase along the removal order;
  ties are separated by 1e-5 steps (``ordered_scores``), so ranking by score reproduces ``select``
  exactly. No magnitude term is used: a low-energy but unique channel is still unique.

On depthwise-separable blocks the engine presents one group (expand conv, depthwise conv, projecting
conv's input), so removing a channel prunes the coupled triple.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from simprune.methods._similarity import Moments, group_moments, lstsq_fit, ordered_scores, resolve_n_keep
from simprune.methods.base import ChannelGroup, Criterion, Selection, option
from simprune.methods.registry import register_method

NEAR_THRESHOLDS = (0.9, 0.95, 0.99)


def corr_summary(corr: np.ndarray) -> dict[str, float | int]:
    """Mean and max off-diagonal |corr| and the number of channel pairs above each threshold."""
    n = len(corr)
    if n < 2:
        return {"mean_abs_corr": 0.0, "max_abs_corr": 0.0,
                **{f"pairs_abs_corr_ge_{t}": 0 for t in NEAR_THRESHOLDS}}
    a = np.abs(corr[np.triu_indices(n, 1)])
    out: dict[str, float | int] = {"mean_abs_corr": float(a.mean()), "max_abs_corr": float(a.max())}
    for t in NEAR_THRESHOLDS:
        out[f"pairs_abs_corr_ge_{t}"] = int((a >= t).sum())
    return out


def removal_order(m: Moments, dead_tol: float = 1e-10) -> tuple[list[int], list[float]]:
    """Channels in the order the iterative removal takes them out, with their redundancy at that moment
    (``inf`` for dead channels); the last channel left is not listed."""
    corr = np.abs(m.correlation(dead_tol).numpy())
    var = m.var.numpy()
    dead = m.dead(dead_tol).numpy()
    n = len(corr)
    a = corr.copy()
    np.fill_diagonal(a, -np.inf)
    alive = np.ones(n, dtype=bool)
    order: list[int] = []
    red: list[float] = []
    for _ in range(n - 1):
        r = np.where(alive, a.max(axis=1), -np.inf)
        r = np.where(alive & dead, np.inf, r)
        top = r.max()
        cands = np.flatnonzero(alive & (r >= top - 1e-12 if np.isfinite(top) else r == top))
        # tie-break: smallest variance, then highest index
        j = int(cands[np.lexsort((-cands, var[cands]))[0]])
        order.append(j)
        red.append(float(r[j]))
        alive[j] = False
        a[j, :] = -np.inf
        a[:, j] = -np.inf
    return order, red


@register_method
@dataclass
class QSFM(Criterion):
    """Feature-map correlation, iterative removal of the most redundant channel, with fold coefficients."""

    name = "qsfm"
    needs_data = True
    summary = "Feature-map similarity (after Wang et al. 2022): drop the most correlated channel, fold it."
    matrix_kind: ClassVar[str] = "similarity"
    max_positions: int = option(200_000, "feature-map positions sampled per group for the correlations", ge=16)
    dead_tol: float = option(1e-10, "variance below which a channel counts as dead (removed first)", ge=0.0)

    def moments(self, group: ChannelGroup) -> Moments:
        """Channel means and covariance over the calibration positions (raises without features)."""
        return group_moments(self, group, self.max_positions)

    def matrix(self, group: ChannelGroup) -> np.ndarray:
        """Pearson correlation between the channels' maps (dead channels: 0 off the diagonal)."""
        return self.moments(group).correlation(self.dead_tol).numpy()

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        m = self.moments(group)
        order, red = removal_order(m, self.dead_tol)
        values = [0.0 if not np.isfinite(r) else 1.0 - min(r, 1.0) ** 2 for r in red]
        survivors = sorted(set(range(group.n_channels)) - set(order))
        return ordered_scores(order, values, survivors, group.n_channels).float()

    def select(self, group: ChannelGroup, n_keep: int) -> Selection:
        m = self.moments(group)
        n = group.n_channels
        n_keep = resolve_n_keep(n_keep, n)
        order, red = removal_order(m, self.dead_tol)
        removed = order[: n - n_keep]
        gone = set(removed)
        keep = [i for i in range(n) if i not in gone]
        corr = m.correlation(self.dead_tol).numpy()
        abs_kept = np.abs(corr[:, keep])
        var_kept = m.var.numpy()[keep]
        merge: dict[int, tuple[int, float, float]] = {}
        merge_corr: dict[int, float] = {}
        dead = m.dead(self.dead_tol).numpy()
        for r in removed:
            if dead[r]:  # any kept channel will do (alpha = 0): take the one with the largest variance
                k = keep[int(np.argmax(var_kept))]
            else:
                k = keep[int(np.argmax(abs_kept[r]))]
            alpha, beta = lstsq_fit(m, r, k, self.dead_tol)
            merge[int(r)] = (int(k), alpha, beta)
            merge_corr[int(r)] = 1.0 if dead[r] else float(abs(corr[r, k]))
        info = {
            "method": self.name,
            "positions": m.n_positions,
            "subsampled": m.subsampled,
            "dead_channels": [int(i) for i in np.flatnonzero(dead)],
            "corr": corr_summary(corr),
            "removed_redundancy": [float(min(x, 1.0)) if np.isfinite(x) else 1.0 for x in red[: n - n_keep]],
            "merge_abs_corr": merge_corr,
        }
        return Selection(keep=torch.tensor(keep, dtype=torch.long), merge=merge, info=info)
