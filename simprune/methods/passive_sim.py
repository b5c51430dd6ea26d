"""``passive_sim``: passive cosine-similarity filter pruning (Singh & Plumbley, Interspeech 2022).

Data-free: only the layer's weights are used.

1. Prototype per filter (:func:`~simprune.methods._similarity.filter_prototypes`): ``A_j =
   W[j].reshape(C_in, kh*kw).T`` (row = spatial position ``i*kw + jj``, column = input channel), SVD
   ``A_j = U S V^T``, prototype ``u_1`` sign-fixed by the sign of ``v_1[0]``; one batched SVD for all filters.
   For 1x1 kernels and Linear layers ``u_1`` has length 1 and means nothing, so the prototype is the filter's
   unit-normalised vector over input channels instead.
2. ``D[a, b] = 1 - cos(n_a, n_b)``, rounded to 5 decimals.
3. The paper's greedy: ``nn(a)`` and ``s_a`` per filter; visit in ascending ``s_a`` (ties: lower index);
   if ``a`` is not in R put ``a`` in K and ``nn(a)`` in R; K wins. ``auto_keep`` = ``|K|``.

``select(group, n_keep)`` (a requested ratio or FLOPs target) ranks filters by replaceability:

* ``n_keep == auto_keep``: exactly the paper's K;
* ``n_keep > auto_keep``: remove only the first ``n - n_keep`` filters of R \\ K in the order the greedy
  put them in R (ascending distance to the kept filter that made them redundant, i.e. most replaceable
  first);
* ``n_keep < auto_keep``: after removing all of R \\ K, rerun the same greedy on K (round 2, 3, ...) and
  remove in the same order until ``n_keep`` remain.

Within a round a filter is removed only because a kept filter (its witness, reported in
``Selection.info["nearest_kept"]``) is its closest match, so the two members of that closest pair are never
both removed in the round; a witness may itself be removed in a later round (the constraint is relaxed
round by round, and ``info["rounds_used"]`` says how many rounds were needed). ``scores`` follows the same
order (see :meth:`~simprune.methods._similarity.Elimination.scores`), so global ranking agrees with
``select``. ``Selection.merge`` is ``None``: a weight-only method has no data to fit merge coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from simprune.methods._similarity import (
    cosine_similarity_matrix,
    eliminate,
    filter_prototypes,
    greedy_selection,
    rounded_distance,
)
from simprune.methods.base import ChannelGroup, Criterion, Selection
from simprune.methods.registry import register_method


@register_method
@dataclass
class PassiveSim(Criterion):
    """Cosine similarity of SVD filter prototypes + the paper's greedy (data-free)."""

    name = "passive_sim"
    needs_data = False
    summary = "Passive cosine-similarity pruning (Singh & Plumbley 2022): SVD prototypes + greedy."
    matrix_kind: ClassVar[str] = "similarity"

    def similarity(self, group: ChannelGroup) -> torch.Tensor:
        """Cosine similarity between the filter prototypes (float64, (C, C))."""
        return cosine_similarity_matrix(filter_prototypes(group.weight))

    def distance(self, group: ChannelGroup) -> np.ndarray:
        """``D = 1 - cos``, rounded to 5 decimals."""
        return rounded_distance(self.similarity(group))

    def matrix(self, group: ChannelGroup) -> np.ndarray:
        """The similarity matrix the method uses, ``1 - D`` (for analysis and plots)."""
        return 1.0 - self.distance(group)

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        return eliminate(self.distance(group)).scores(group.n_channels).float()

    def auto_keep(self, group: ChannelGroup) -> int | None:
        return eliminate(self.distance(group)).auto_keep

    def select(self, group: ChannelGroup, n_keep: int) -> Selection:
        return greedy_selection(self.distance(group), n_keep, self.name)
