"""``bn_scale``: |gamma| of the BatchNorm that follows the layer (network slimming, Liu et al. ICCV 2017).

Channels with the smallest scaling factor are pruned first. When the group has no BatchNorm (or one without
affine parameters), the criterion falls back to the filter L1 norm and says so in ``Selection.info``
(``{"fallback": "l1"}``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simprune.methods._similarity import flat_filters, resolve_n_keep, topk_stable
from simprune.methods.base import ChannelGroup, Criterion, Selection
from simprune.methods.registry import register_method


def _gamma(group: ChannelGroup) -> torch.Tensor | None:
    bn = group.bn
    if bn is None or getattr(bn, "weight", None) is None:
        return None
    return bn.weight.detach()


@register_method
@dataclass
class BNScale(Criterion):
    """Score = |gamma_j| (falls back to the filter L1 norm without a BatchNorm)."""

    name = "bn_scale"
    needs_data = False
    scores_own_weights = True
    summary = "|gamma| of the following BatchNorm (network slimming); L1 norm when there is none."

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        g = _gamma(group)
        if g is None:
            return flat_filters(group.weight).abs().sum(dim=1).float().cpu()
        return g.abs().float().cpu()

    def select(self, group: ChannelGroup, n_keep: int) -> Selection:
        n_keep = resolve_n_keep(n_keep, group.n_channels)
        info = {"method": self.name}
        if _gamma(group) is None:
            info["fallback"] = "l1"
        return Selection(keep=topk_stable(self.scores(group), n_keep), info=info)
