"""``nystrom_sim``: passive_sim with a Nystrom-approximated similarity matrix (Singh & Plumbley, ICASSP 2023).

Let ``N`` be the (kh*kw) x d matrix of unit prototypes (same prototypes as passive_sim, including its 1x1
fallback). Pick ``m`` landmark filters ``L``; ``C = N^T N[:, L]`` (d x m), ``W = C[L, :]`` (m x m), ``W_k``
its best rank-``k`` approximation (SVD; ``k = None`` means ``m``); ``S ~= C pinv(W_k) C^T``;
``D = 1 - S`` rounded to 5 decimals; then exactly passive_sim's greedy and ``select``.

Landmarks: ``"first"`` (the first m filters, as the authors), ``"random"`` (seeded), ``"kmeans++"``
(seeded D^2 sampling on the prototypes). Since ``rank(N^T N) <= kh*kw`` (9 for 3x3 kernels), ``m >= 9``
landmarks that span the prototypes make the approximation exact, and the kept set then equals
passive_sim's. For 1x1 kernels the prototypes have length C_in, so m = 9 is usually only approximate.
The pseudo-inverse drops singular values below ``rtol`` times the largest one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from simprune.methods._similarity import filter_prototypes, greedy_selection, rounded_distance
from simprune.methods.base import ChannelGroup, Selection, option
from simprune.methods.passive_sim import PassiveSim
from simprune.methods.registry import register_method

LANDMARKS = ("first", "random", "kmeans++")


def choose_landmarks(protos: torch.Tensor, m: int, how: str, seed: int) -> torch.Tensor:
    """Indices of ``m`` landmark rows of ``protos`` (d, k), chosen by ``how`` (see module doc)."""
    d = protos.shape[0]
    m = min(int(m), d)
    if how == "first":
        return torch.arange(m)
    g = torch.Generator().manual_seed(int(seed))
    if how == "random":
        return torch.randperm(d, generator=g)[:m].sort().values
    if how == "kmeans++":
        x = protos.double().cpu()
        chosen = [int(torch.randint(d, (1,), generator=g))]
        d2 = ((x - x[chosen[0]]) ** 2).sum(1)
        while len(chosen) < m:
            total = float(d2.sum())
            if total <= 1e-24:  # every filter duplicates a landmark: take the next unchosen indices
                rest = [i for i in range(d) if i not in chosen]
                chosen.extend(rest[: m - len(chosen)])
                break
            nxt = int(torch.multinomial(d2 / total, 1, generator=g))
            chosen.append(nxt)
            d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
        return torch.tensor(sorted(chosen))
    raise ValueError(f"landmarks must be one of {LANDMARKS}, got {how!r}")


def nystrom_similarity(protos: torch.Tensor, landmarks: torch.Tensor, rank: int | None = None,
                       rtol: float = 1e-10) -> torch.Tensor:
    """``S ~= C pinv(W_k) C^T`` with ``C = N^T N[:, L]`` (rows of ``protos`` are the columns of N)."""
    x = protos.double()
    c = x @ x[landmarks.to(x.device)].T  # (d, m)
    w = c[landmarks.to(x.device)]  # (m, m)
    u, s, vh = torch.linalg.svd(w)
    k = len(s) if rank is None else max(1, min(int(rank), len(s)))
    keep = s[:k] > rtol * s[0].clamp_min(1e-300)
    u, s, vh = u[:, :k][:, keep], s[:k][keep], vh[:k][keep]
    pinv = vh.T @ torch.diag(1.0 / s) @ u.T  # pinv(W_k)
    sim = c @ pinv @ c.T
    return 0.5 * (sim + sim.T)


@register_method
@dataclass
class NystromSim(PassiveSim):
    """passive_sim with ``S ~= C pinv(W_k) C^T`` from ``m`` landmark filters."""

    name = "nystrom_sim"
    needs_data = False
    summary = "passive_sim with a Nystrom-approximated similarity matrix (Singh & Plumbley 2023)."
    matrix_kind: ClassVar[str] = "similarity"
    landmarks: Literal["first", "random", "kmeans++"] = option("first", "how the m landmark filters are chosen")
    m: int = option(9, "number of landmark filters", ge=1)
    rank: int | None = option(None, "rank of the pseudo-inverse of the landmark block (None: full)", ge=1)
    rtol: float = option(1e-10, "relative cut-off of the landmark block's singular values", ge=0.0)

    def __post_init__(self) -> None:
        if self.landmarks not in LANDMARKS:
            raise ValueError(f"landmarks must be one of {LANDMARKS}, got {self.landmarks!r}")
        if int(self.m) < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")
        if self.rank is not None and int(self.rank) < 1:
            raise ValueError(f"rank must be >= 1 or None, got {self.rank}")

    def _approx(self, group: ChannelGroup) -> tuple[torch.Tensor, torch.Tensor]:
        protos = filter_prototypes(group.weight)
        lm = choose_landmarks(protos, self.m, self.landmarks, self.seed)
        return nystrom_similarity(protos, lm, self.rank, self.rtol), lm

    def similarity(self, group: ChannelGroup) -> torch.Tensor:
        """The Nystrom approximation of passive_sim's cosine-similarity matrix (float64, (C, C))."""
        return self._approx(group)[0]

    def select(self, group: ChannelGroup, n_keep: int) -> Selection:
        sim, lm = self._approx(group)
        m = len(lm)
        extra = {
            "landmarks": self.landmarks,
            "m": m,
            "rank": m if self.rank is None else min(int(self.rank), m),
            "landmark_indices": [int(i) for i in lm],
        }
        return greedy_selection(rounded_distance(sim), n_keep, self.name, extra)
