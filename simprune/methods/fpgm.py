"""``fpgm``: filter pruning via geometric median (He et al., CVPR 2019).

The geometric median of a layer's filters is approximated as in the authors' code: a filter's score is the
sum of its Euclidean distances to all other filters, ``score_j = sum_k ||F_j - F_k||_2``. Filters with the
smallest sum lie closest to the median, so the others can replace them: they are pruned first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simprune.methods._similarity import ScoreCriterion, flat_filters
from simprune.methods.base import ChannelGroup
from simprune.methods.registry import register_method


@register_method
@dataclass
class FPGM(ScoreCriterion):
    """Score = sum of distances to the other filters; the most central (replaceable) filters go first."""

    name = "fpgm"
    needs_data = False
    scores_own_weights = True
    summary = "Distance to the geometric median of the layer's filters (He et al. 2019)."

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        f = flat_filters(group.weight)
        return torch.cdist(f, f).sum(dim=1).float().cpu()
