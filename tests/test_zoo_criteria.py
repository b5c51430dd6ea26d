"""Every criterion selects valid channels on every group of every zoo architecture (issue 3).

The full prune-and-export path (surgery, exports checked against the model) is criterion-independent once the
kept indices are chosen; ``tests/test_zoo_prune.py`` runs it for every architecture with l1 and a rotating
second criterion. Here every criterion runs on every architecture's groups (up to ``MAX_GROUPS`` evenly spaced
ones, of at most ``MAX_WIDTH`` channels: the similarity criteria take tens of seconds on VGG's 4096-wide
classifier layers, which test_zoo_prune covers), with calibration features, and the selections are checked;
the model is then pruned with one criterion's selections (rotating per architecture) and must run.
"""

from __future__ import annotations

import pytest
import torch

from simprune.methods import get_criterion, list_criteria
from simprune.pruning.features import collect_features, to_channel_group
from simprune.pruning.groups import discover_groups
from simprune.pruning.phases import chunked_select
from simprune.pruning.surgery import remove_channels
from simprune.zoo import build_model, list_archs

ARCHS = [a.name for a in list_archs()]
CRITERIA = [c["name"] for c in list_criteria()]
MAX_GROUPS = 12
MAX_WIDTH = 1024


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _size(name: str) -> tuple[int, ...]:
    size = tuple(next(a for a in list_archs() if a.name == name).input_size)
    return (size[0], 32, 32) if size[-2:] == (224, 224) else size


@pytest.mark.parametrize("arch", ARCHS)
def test_every_criterion_selects_on_every_arch(arch: str) -> None:
    size = _size(arch)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10).eval()
    example = torch.randn(1, *size)
    dg, specs, _ = discover_groups(model, example, None)
    specs = [s for s in specs if s.n_channels <= MAX_WIDTH]
    assert specs
    if len(specs) > MAX_GROUPS:
        specs = [specs[round(i * (len(specs) - 1) / (MAX_GROUPS - 1))] for i in range(MAX_GROUPS)]
    feats = collect_features(model, specs, torch.randn(4, *size), None)
    groups = {s.name: to_channel_group(s, feats) for s in specs}
    chosen: dict[str, list[int]] = {}
    rotating = CRITERIA[ARCHS.index(arch) % len(CRITERIA)]
    for name in CRITERIA:
        crit = get_criterion(name)
        for s in specs:
            k = max(s.ch_groups, s.n_channels // 2 // s.ch_groups * s.ch_groups)
            keep = chunked_select(crit, groups[s.name], k, s.ch_groups).keep.tolist()
            assert len(keep) == k and keep == sorted(set(keep)), (name, s.name, k)
            assert 0 <= keep[0] and keep[-1] < s.n_channels, (name, s.name)
            if name == rotating:
                chosen[s.name] = keep
    for s in specs:
        remove_channels(dg, s.root, chosen[s.name])
    with torch.no_grad():
        out = model(torch.randn(2, *size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
