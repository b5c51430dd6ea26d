"""``l1``: filter L1 norm (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

The filters with the smallest sum of absolute weights are pruned first. Works on conv weights of any kernel
size (depthwise/grouped included) and on Linear weights (rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simprune.methods._similarity import ScoreCriterion, flat_filters
from simprune.methods.base import ChannelGroup
from simprune.methods.registry import register_method


@register_method
@dataclass
class L1Norm(ScoreCriterion):
    """Score = ||W[j]||_1; lowest is pruned."""

    name = "l1"
    needs_data = False
    scores_own_weights = True
    summary = "Filter L1 norm (Li et al. 2017): smallest-norm filters are pruned."

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        return flat_filters(group.weight).abs().sum(dim=1).float().cpu()
