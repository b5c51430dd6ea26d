"""``l2``: filter L2 norm (the L2 variant of Li et al., ICLR 2017).

The filters with the smallest Euclidean norm are pruned first. Conv (any kernel size) and Linear weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simprune.methods._similarity import ScoreCriterion, flat_filters
from simprune.methods.base import ChannelGroup
from simprune.methods.registry import register_method


@register_method
@dataclass
class L2Norm(ScoreCriterion):
    """Score = ||W[j]||_2; lowest is pruned."""

    name = "l2"
    needs_data = False
    scores_own_weights = True
    summary = "Filter L2 norm: smallest-norm filters are pruned."

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        return flat_filters(group.weight).norm(dim=1).float().cpu()
