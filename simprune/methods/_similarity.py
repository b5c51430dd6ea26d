"""Shared helpers for the criteria: kept-count checks, filter prototypes, the passive-similarity greedy,
feature-map moments and least-squares merge coefficients.

Everything here is deterministic: ties are broken by the lowest channel index (``np.argmin`` and stable
sorts return the first occurrence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from simprune.methods.base import ChannelGroup, Criterion, Selection

DIST_DECIMALS = 5
"""passive_sim / nystrom_sim round the distance matrix to this many decimals (the paper's procedure)."""


def resolve_n_keep(n_keep: int, n_channels: int) -> int:
    """Validate a requested kept count: ``ValueError`` below 1, clipped to ``n_channels`` above it."""
    n_keep = int(n_keep)
    if n_keep < 1:
        raise ValueError(f"n_keep must be >= 1, got {n_keep}")
    return min(n_keep, n_channels)


def topk_stable(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the ``n_keep`` highest scores; ties keep the lower index (stable sort)."""
    order = torch.sort(scores.detach().double().cpu(), descending=True, stable=True).indices
    return order[:n_keep]


@dataclass
class ScoreCriterion(Criterion):
    """A criterion that keeps the ``n_keep`` best scores (validated ``n_keep``, deterministic ties)."""

    def select(self, group: ChannelGroup, n_keep: int) -> Selection:
        n_keep = resolve_n_keep(n_keep, group.n_channels)
        s = self.scores(group)
        return Selection(keep=topk_stable(s, n_keep), info={"method": self.name})


# --------------------------------------------------------------------------------------------------------
# Weights


def flat_filters(weight: torch.Tensor) -> torch.Tensor:
    """Filters as rows, float64: (C_out, C_in * kh * kw) for a conv weight, (C_out, C_in) for a Linear."""
    return weight.detach().reshape(weight.shape[0], -1).double()


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the rows of ``x`` (float64; a zero row has similarity 0 with everything)."""
    x = x.double()
    n = x.norm(dim=1, keepdim=True)
    xn = torch.where(n > 0, x / n.clamp_min(1e-300), torch.zeros_like(x))
    return xn @ xn.T


def filter_prototypes(weight: torch.Tensor) -> torch.Tensor:
    """passive_sim prototypes, one unit-length row per filter (float64).

    For a conv weight (C_out, C_in, kh, kw) with ``kh * kw > 1``: ``A_j = W[j].reshape(C_in, kh*kw).T`` has
    shape (kh*kw, C_in) (row = spatial position ``i*kw + jj``, column = input channel); its SVD
    ``A_j = U S V^T`` gives the prototype ``u_1`` (length kh*kw), multiplied by the sign of ``v_1[0]``
    (a zero ``v_1[0]`` counts as positive). All filters go through one batched ``torch.linalg.svd``.

    For 1x1 kernels (and Linear weights) ``u_1`` would have length 1 and carry no information, so the
    prototype is instead the filter's vector over input channels, normalised to unit L2 norm (a zero filter
    stays zero).
    """
    w = weight.detach().double()
    if w.dim() == 4 and w.shape[2] * w.shape[3] > 1:
        c_out, c_in, kh, kw = w.shape
        a = w.reshape(c_out, c_in, kh * kw).transpose(1, 2)  # (C_out, kh*kw, C_in)
        u, _, vh = torch.linalg.svd(a, full_matrices=False)
        u1 = u[:, :, 0]  # (C_out, kh*kw)
        v1_first = vh[:, 0, 0]  # first entry of v_1
        sign = torch.where(v1_first < 0, -1.0, 1.0).to(u1)
        return u1 * sign[:, None]
    x = w.reshape(w.shape[0], -1)
    n = x.norm(dim=1, keepdim=True)
    return torch.where(n > 0, x / n.clamp_min(1e-300), torch.zeros_like(x))


def rounded_distance(sim: torch.Tensor) -> np.ndarray:
    """``D = 1 - sim`` rounded to :data:`DIST_DECIMALS` decimals, as a float64 numpy array."""
    d = 1.0 - sim.detach().double().cpu().numpy()
    return np.round(d, DIST_DECIMALS)


# --------------------------------------------------------------------------------------------------------
# The passive_sim greedy and the ordered elimination built on it


def nearest_neighbours(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row ``a``: ``nn(a)`` (the nearest *other* index, lowest index on ties) and ``s_a``."""
    d = dist.astype(np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    nn = np.argmin(d, axis=1)
    return nn, d[np.arange(len(d)), nn]


def passive_greedy(dist: np.ndarray) -> tuple[list[int], list[tuple[int, int]]]:
    """The paper's greedy on a (rounded) distance matrix.

    Visit filters in ascending ``s_a`` (stable: ties by index); if ``a`` is not in the redundant set R, put
    ``a`` in the kept set K and ``nn(a)`` in R. K wins over R. Returns ``(K, removed)``: K sorted, and
    ``removed`` the ``(filter, witness)`` pairs of R \\ K in the order they entered R (most replaceable
    first), the witness being the kept filter that put it there.
    """
    n = len(dist)
    if n == 1:
        return [0], []
    nn, s = nearest_neighbours(dist)
    kept: set[int] = set()
    red: list[tuple[int, int]] = []
    red_set: set[int] = set()
    for a in np.argsort(s, kind="stable"):
        a = int(a)
        if a not in red_set:
            kept.add(a)
            b = int(nn[a])
            if b not in red_set:
                red_set.add(b)
                red.append((b, a))
    return sorted(kept), [(b, a) for b, a in red if b not in kept]


@dataclass
class Elimination:
    """Filters in the order a repeated greedy removes them, each with the kept filter it is closest to.

    Round 1 is :func:`passive_greedy` on all filters; round r+1 reruns it on the filters round r kept, until
    one filter is left. ``order[t]`` is the t-th removed filter, ``witness[t]`` the filter that put it in R
    (kept in that round) and ``dist[t]`` their distance. ``auto_keep`` is the kept count of round 1.
    """

    order: list[int]
    witness: list[int]
    dist: list[float]
    survivor: int
    auto_keep: int
    rounds: list[int] = field(default_factory=list)  # round index (0-based) of each removal

    def keep_for(self, n_keep: int, n: int) -> list[int]:
        """The kept set after removing the first ``n - n_keep`` filters of :attr:`order`."""
        gone = set(self.order[: n - n_keep])
        return [i for i in range(n) if i not in gone]

    def scores(self, n: int) -> torch.Tensor:
        """Per-filter score, higher = keep: the distance to its witness, made strictly increasing along the
        removal order by :func:`ordered_scores` (the survivor scores highest). Values are cosine distances
        in [0, 2] (plus small steps): comparable across layers, and ``topk(scores, n_keep)`` is exactly
        the kept set of ``select(group, n_keep)``."""
        return ordered_scores(self.order, self.dist, [self.survivor], n)


SCORE_STEP = 1e-5
"""Smallest gap between consecutive scores of :func:`ordered_scores` (exactly representable in float32 for
scores up to ~100)."""


def ordered_scores(order: Sequence[int], values: Sequence[float], survivors: Sequence[int], n: int,
                   step: float = SCORE_STEP) -> torch.Tensor:
    """Scores that reproduce a removal order: ``score[order[t]] = max(values[t], score[order[t-1]] + step)``
    (first: ``values[0]``), then every survivor gets the last score plus one step. Ranking by these scores
    (descending, float32 included) keeps exactly the channels a removal order keeps, and values that
    already increase along the order are kept as they are (up to the steps)."""
    out = torch.zeros(n, dtype=torch.float64)
    prev = -np.inf
    for r, v in zip(order, values, strict=True):
        prev = max(float(v), prev + step)
        out[r] = prev
    last = (prev if np.isfinite(prev) else 0.0) + step
    for s in survivors:
        out[s] = last
    return out


def eliminate(dist: np.ndarray) -> Elimination:
    """Run :func:`passive_greedy` round after round (see :class:`Elimination`)."""
    n = len(dist)
    alive = list(range(n))
    order: list[int] = []
    witness: list[int] = []
    dists: list[float] = []
    rounds: list[int] = []
    auto_keep = n
    r = 0
    while len(alive) > 1:
        sub = dist[np.ix_(alive, alive)]
        kept, removed = passive_greedy(sub)
        if r == 0:
            auto_keep = len(kept)
        for b, a in removed:
            order.append(alive[b])
            witness.append(alive[a])
            dists.append(float(sub[a, b]))
            rounds.append(r)
        alive = [alive[k] for k in kept]
        r += 1
    return Elimination(order, witness, dists, alive[0], auto_keep, rounds)


def greedy_selection(dist: np.ndarray, n_keep: int, method: str, extra: dict | None = None) -> Selection:
    """Shared ``select`` of passive_sim and nystrom_sim (see :class:`Elimination` for the order).

    ``n_keep`` equal to the greedy's own count returns exactly the paper's K. A larger ``n_keep`` restores
    the least replaceable removed filters; a smaller one continues with further greedy rounds on K. Every
    removed filter has a witness kept in the round that removed it, so a closest pair found in a round is
    never removed at once within that round.
    """
    n = len(dist)
    n_keep = resolve_n_keep(n_keep, n)
    el = eliminate(dist)
    keep = el.keep_for(n_keep, n)
    n_removed = n - n_keep
    info: dict = {
        "method": method,
        "auto_keep": el.auto_keep,
        "rounds_used": (max(el.rounds[:n_removed]) + 1) if n_removed else 0,
        "nearest_kept": {int(r): int(w) for r, w in zip(el.order[:n_removed], el.witness[:n_removed],
                                                         strict=True)},
    }
    if extra:
        info.update(extra)
    return Selection(keep=torch.tensor(keep, dtype=torch.long), info=info)


# --------------------------------------------------------------------------------------------------------
# Feature maps


@dataclass
class Moments:
    """First and second moments of a layer's channels over calibration positions (float64, CPU)."""

    mean: torch.Tensor  # (C,)
    cov: torch.Tensor  # (C, C), population covariance
    n_positions: int
    subsampled: bool

    @property
    def var(self) -> torch.Tensor:
        return torch.diagonal(self.cov).clamp_min(0.0)

    def dead(self, tol: float = 1e-10) -> torch.Tensor:
        """Channels whose variance is zero or below ``tol`` times the layer's largest variance."""
        v = self.var
        return v <= tol * float(v.max().clamp_min(0.0))

    def correlation(self, tol: float = 1e-10) -> torch.Tensor:
        """Pearson correlation (C, C); rows/columns of dead channels are 0 (their diagonal stays 1)."""
        v = self.var
        dead = self.dead(tol)
        sd = torch.where(dead, torch.ones_like(v), v.sqrt())
        corr = self.cov / (sd[:, None] * sd[None, :])
        corr = corr.clamp(-1.0, 1.0)
        corr[dead, :] = 0.0
        corr[:, dead] = 0.0
        corr.fill_diagonal_(1.0)
        return corr


def feature_positions(features: torch.Tensor, max_positions: int, seed: int) -> tuple[torch.Tensor, bool]:
    """Calibration maps as a (P, C) matrix of positions x channels, sub-sampled (seeded) to at most
    ``max_positions`` rows. Accepts (N, C, H, W), (N, C, L) or (N, C) features."""
    f = features.detach()
    if f.dim() < 2:
        raise ValueError(f"features must be (N, C, ...) shaped, got {tuple(f.shape)}")
    f = f.reshape(f.shape[0], f.shape[1], -1)  # (N, C, S)
    n, _, s = f.shape
    total = n * s
    if max_positions and total > max_positions:
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(total, generator=g)[: int(max_positions)].sort().values.to(f.device)
        return f[idx // s, :, idx % s], True  # (P, C): advanced indices around a slice go first
    return f.permute(0, 2, 1).reshape(total, f.shape[1]), False


def channel_moments(features: torch.Tensor, max_positions: int = 200_000, seed: int = 0,
                    chunk: int = 32_768) -> Moments:
    """Mean and covariance of every channel over (sub-sampled) calibration positions.

    Centred chunks are multiplied in float32 on the features' device and accumulated in float64.
    """
    x, sub = feature_positions(features, max_positions, seed)
    p = x.shape[0]
    mean = x.sum(0, dtype=torch.float64) / p
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    m32 = mean.float()
    for i in range(0, p, chunk):
        xc = x[i:i + chunk].float() - m32
        cov += (xc.T @ xc).double()
    cov /= p
    cov = 0.5 * (cov + cov.T)
    return Moments(mean=mean.cpu(), cov=cov.cpu(), n_positions=p, subsampled=sub)


def group_moments(criterion: Criterion, group: ChannelGroup, max_positions: int) -> Moments:
    """:func:`channel_moments` of a group's features, after :meth:`Criterion.check` and a shape check."""
    criterion.check(group)
    f = group.features
    assert f is not None
    if f.dim() < 2 or f.shape[1] != group.n_channels:
        raise ValueError(f"features of shape {tuple(f.shape)} lack the group's {group.n_channels} channels")
    return channel_moments(f, max_positions, criterion.seed)


def lstsq_fit(m: Moments, removed: int, kept: int, tol: float = 1e-10) -> tuple[float, float]:
    """``alpha, beta`` minimising ``||F_removed - (alpha * F_kept + beta)||^2`` over the calibration positions
    (alpha = 0 when the kept channel is constant, so beta is the removed channel's mean)."""
    var_k = float(m.cov[kept, kept])
    dead = m.dead(tol)
    if bool(dead[kept]) or bool(dead[removed]) or var_k <= 0.0:
        alpha = 0.0
    else:
        alpha = float(m.cov[removed, kept]) / var_k
    beta = float(m.mean[removed]) - alpha * float(m.mean[kept])
    return alpha, beta
