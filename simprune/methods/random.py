"""``random``: uniform random channel scores, seeded. The sanity floor every other method must beat.

The generator is seeded with ``seed`` mixed with a CRC32 of the group's name, so results are reproducible
and layers of the same width do not all get the same pattern.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from simprune.methods._similarity import ScoreCriterion
from simprune.methods.base import ChannelGroup
from simprune.methods.registry import register_method


@register_method
@dataclass
class RandomCriterion(ScoreCriterion):
    """Score = U(0, 1) draw from ``torch.Generator().manual_seed(seed ^ crc32(group.name))``."""

    name = "random"
    needs_data = False
    scores_own_weights = True
    summary = "Uniform random scores (seeded): the floor a real criterion must beat."

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        seed = (int(self.seed) ^ zlib.crc32(group.name.encode())) & 0x7FFF_FFFF_FFFF
        g = torch.Generator().manual_seed(seed)
        return torch.rand(group.n_channels, generator=g)
