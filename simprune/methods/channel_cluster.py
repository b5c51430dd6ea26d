"""``channel_cluster``: channel similarity + hierarchical clustering (after Zhang, Zhao, Ni et al.,
arXiv 1908.02620).

The paper's exact probabilistic metric was not available; this is the formulation in METHODS.md:

* each channel's response over the calibration positions (post-BN/activation maps, ``group.features``) is
  modelled as a Gaussian ``N(mu_j, sigma_j^2)``;
* distribution distance between channels: ``distribution="w2"`` the 2-Wasserstein distance
  ``sqrt((mu_a - mu_b)^2 + (sigma_a - sigma_b)^2)``, or ``"skl"`` the symmetric KL divergence
  (variances floored at ``1e-12`` times the layer's largest); normalised per layer as ``d / (d + median)``
  (median of the off-diagonal values) so it lies in [0, 1) whatever the layer's scale;
* map term: ``1 - |corr|`` (Pearson correlation of the flattened maps; a constant channel counts as
  perfectly correlated with everything, since it is exactly foldable into a bias);
* combined distance ``(w_dist * dist + w_corr * (1 - |corr|)) / (w_dist + w_corr)``;
* agglomerative clustering with average linkage (UPGMA, implemented here in numpy) into ``n_keep``
  clusters; each cluster keeps its medoid (the member with the smallest mean combined distance to the other
  members, ties: lower index);
* ``Selection.merge``: each removed channel -> its cluster's representative, ``alpha, beta`` from the
  least-squares fit ``F_removed ~= alpha * F_rep + beta`` on the calibration positions.

``scores``: the clustering is run down to one cluster; a channel's score is the linkage height at which it
stops being its cluster's representative (the last one scores highest), separated by 1e-5 steps in that
order (``ordered_scores``). Average-linkage heights never decrease, so the top-``n_keep`` scores are the
representatives of the ``n_keep``-cluster solution, except when one merge displaces two representatives
at once (the new medoid is neither). There is no automatic kept count (``auto_keep`` is ``None``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from simprune.methods._similarity import Moments, group_moments, lstsq_fit, ordered_scores, resolve_n_keep
from simprune.methods.base import ChannelGroup, Criterion, Selection, option
from simprune.methods.registry import register_method

DISTRIBUTIONS = ("w2", "skl")


def _squash(d: np.ndarray) -> np.ndarray:
    n = len(d)
    off = d[~np.eye(n, dtype=bool)]
    if off.size == 0 or float(off.max()) <= 0.0:
        return np.zeros_like(d)
    scale = float(np.median(off))
    if scale <= 0.0:
        scale = float(off.mean())
    out = d / (d + scale)
    np.fill_diagonal(out, 0.0)
    return out


def distribution_distance(m: Moments, kind: str = "w2") -> np.ndarray:
    """Normalised (see module doc) distance between the channels' Gaussians, (C, C) in [0, 1)."""
    mu = m.mean.numpy()
    var = m.var.numpy()
    if kind == "w2":
        sd = np.sqrt(var)
        d = np.sqrt((mu[:, None] - mu[None, :]) ** 2 + (sd[:, None] - sd[None, :]) ** 2)
    elif kind == "skl":
        v = np.maximum(var, 1e-12 * max(float(var.max()), 1e-30))
        dm2 = (mu[:, None] - mu[None, :]) ** 2
        ratio = v[:, None] / v[None, :]
        d = 0.5 * (ratio + 1.0 / ratio - 2.0) + 0.5 * dm2 * (1.0 / v[:, None] + 1.0 / v[None, :])
    else:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {kind!r}")
    return _squash(d)


def combined_distance(m: Moments, kind: str, w_dist: float, w_corr: float, dead_tol: float) -> np.ndarray:
    """``(w_dist * dist + w_corr * (1 - |corr|)) / (w_dist + w_corr)`` with dead channels fully correlated."""
    corr = np.abs(m.correlation(dead_tol).numpy())
    dead = m.dead(dead_tol).numpy()
    corr[dead, :] = 1.0
    corr[:, dead] = 1.0
    d = (w_dist * distribution_distance(m, kind) + w_corr * (1.0 - corr)) / (w_dist + w_corr)
    np.fill_diagonal(d, 0.0)
    return np.maximum(0.5 * (d + d.T), 0.0)


def medoid(dist: np.ndarray, members: list[int]) -> int:
    """The member with the smallest mean distance to the others (ties: lowest index)."""
    if len(members) == 1:
        return members[0]
    idx = sorted(members)
    sub = dist[np.ix_(idx, idx)]
    return idx[int(np.argmin(sub.sum(axis=1)))]


def average_linkage(dist: np.ndarray, n_clusters: int,
                    on_merge: Callable[[float, list[int]], None] | None = None) -> list[list[int]]:
    """Agglomerative clustering, average linkage, until ``n_clusters`` remain (closest pair first, ties:
    lowest indices). ``on_merge(height, merged_members)`` is called after every merge."""
    n = len(dist)
    d = dist.astype(np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    size = np.ones(n)
    members: list[list[int] | None] = [[i] for i in range(n)]
    active = np.ones(n, dtype=bool)
    for _ in range(n - max(int(n_clusters), 1)):
        flat = int(np.argmin(d))
        i, j = divmod(flat, n)
        if i > j:
            i, j = j, i
        h = float(d[i, j])
        new = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])
        d[i, :] = new
        d[:, i] = new
        d[i, i] = np.inf
        d[j, :] = np.inf
        d[:, j] = np.inf
        d[i, ~active] = np.inf
        d[~active, i] = np.inf
        size[i] += size[j]
        members[i] = sorted(members[i] + members[j])  # type: ignore[operator]
        members[j] = None
        active[j] = False
        if on_merge is not None:
            on_merge(h, members[i])
    return [mm for mm in members if mm is not None]


@register_method
@dataclass
class ChannelCluster(Criterion):
    """Gaussian + correlation channel distance, average-linkage clustering, one medoid kept per cluster."""

    name = "channel_cluster"
    needs_data = True
    summary = "Channel similarity + hierarchical clustering (after Zhang et al. 2019): keep one per cluster."
    matrix_kind: ClassVar[str] = "distance"
    distribution: Literal["w2", "skl"] = option("w2", "distance between channel distributions: 2-Wasserstein "
                                                "(w2) or symmetric KL (skl) of Gaussian fits")
    w_dist: float = option(0.5, "weight of the distribution distance in the combined distance", ge=0.0)
    w_corr: float = option(0.5, "weight of (1 - |correlation|) in the combined distance", ge=0.0)
    max_positions: int = option(200_000, "feature-map positions sampled per group for the statistics", ge=16)
    dead_tol: float = option(1e-10, "variance below which a channel counts as dead", ge=0.0)

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}")
        if self.w_dist < 0 or self.w_corr < 0 or self.w_dist + self.w_corr <= 0:
            raise ValueError("w_dist and w_corr must be >= 0 and not both 0")

    def moments(self, group: ChannelGroup) -> Moments:
        """Channel means and covariance over the calibration positions (raises without features)."""
        return group_moments(self, group, self.max_positions)

    def _distance(self, m: Moments) -> np.ndarray:
        return combined_distance(m, self.distribution, self.w_dist, self.w_corr, self.dead_tol)

    def matrix(self, group: ChannelGroup) -> np.ndarray:
        """The combined channel distance matrix used for clustering, (C, C) in [0, 1]."""
        return self._distance(self.moments(group))

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        dist = self._distance(self.moments(group))
        n = len(dist)
        is_rep = np.ones(n, dtype=bool)
        order: list[int] = []
        heights: list[float] = []

        def on_merge(h: float, mem: list[int]) -> None:
            r = medoid(dist, mem)
            for c in mem:
                if is_rep[c] and c != r:
                    is_rep[c] = False
                    order.append(c)
                    heights.append(h)

        average_linkage(dist, 1, on_merge)
        return ordered_scores(order, heights, [int(i) for i in np.flatnonzero(is_rep)], n).float()

    def select(self, group: ChannelGroup, n_keep: int) -> Selection:
        m = self.moments(group)
        dist = self._distance(m)
        n = len(dist)
        n_keep = resolve_n_keep(n_keep, n)
        clusters = average_linkage(dist, n_keep)
        keep: list[int] = []
        merge: dict[int, tuple[int, float, float]] = {}
        for mem in clusters:
            r = medoid(dist, mem)
            keep.append(r)
            for c in mem:
                if c != r:
                    alpha, beta = lstsq_fit(m, c, r, self.dead_tol)
                    merge[int(c)] = (int(r), alpha, beta)
        info = {
            "method": self.name,
            "distribution": self.distribution,
            "w_dist": self.w_dist,
            "w_corr": self.w_corr,
            "positions": m.n_positions,
            "subsampled": m.subsampled,
            "cluster_sizes": sorted((len(c) for c in clusters), reverse=True),
        }
        return Selection(keep=torch.tensor(sorted(keep), dtype=torch.long), merge=merge, info=info)
