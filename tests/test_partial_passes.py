"""Partial forward passes: the scans' prefix cache and the early exits of feature collection and least squares
give the results of full passes while computing less."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from simprune.compensation import reconstruct_consumers
from simprune.pruning import prefix_cache
from simprune.pruning.allocation import block_damage_scan, sensitivity_scan
from simprune.pruning.blocks import removable_blocks
from simprune.pruning.features import collect_features
from simprune.pruning.groups import Consumer, GroupSpec, discover_groups
from simprune.pruning.prefix_cache import PrefixCache
from simprune.zoo import build_model


def _count_convs(model: nn.Module) -> tuple[list[int], list]:
    calls = [0]
    hooks = [m.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    return calls, hooks


@torch.no_grad()
def test_probe_matches_full_pass_with_inplace_relus_and_skips_the_prefix() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()  # BasicBlock reuses one ReLU(inplace=True) twice
    x = torch.randn(4, 3, 64, 64)
    cache = PrefixCache(model, x)
    torch.testing.assert_close(cache.output, model(x))
    for name in ("layer3.1.conv2", "layer2.0.conv1", "layer4.1", "fc", "layer3.1.conv2"):
        mod = model.get_submodule(name)
        h = mod.register_forward_hook(lambda m, i, o: o * 0.5 + 1.0)
        try:
            want = model(x)
            calls, counters = _count_convs(model)
            with cache.reuse_before(name):
                got = model(x)
                got_again = model(x)  # replayed outputs are copies: a second probe sees the same prefix
            full = len([m for m in model.modules() if isinstance(m, nn.Conv2d)])
        finally:
            h.remove()
            for c in counters:
                c.remove()
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_again, want)
        assert calls[0] < 2 * full, name  # fewer convs ran than in two full passes
    torch.testing.assert_close(model(x), cache.output)  # nothing left patched


@torch.no_grad()
def test_unknown_point_and_zero_budget_reuse_nothing() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    cache = PrefixCache(model, x, budget_bytes=0)
    calls, hooks = _count_convs(model)
    with cache.reuse_before("layer4.1.conv2"):
        model(x)
    with PrefixCache(model, x).reuse_before("no.such.module"):
        model(x)
    for h in hooks:
        h.remove()
    full = len([m for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert calls[0] == 3 * full  # two probes and the second cache's recording pass, all complete


def test_scans_are_unchanged_by_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10).eval()
    x = torch.randn(16, 3, 32, 32)
    _, specs, _ = discover_groups(model, x[:1])
    blocks = [b.name for b in removable_blocks(model)]

    def select(spec, k):  # noqa: ANN001, ANN202
        return spec.root.weight.detach().abs().flatten(1).sum(1).argsort(descending=True)[:k]

    def scans() -> tuple[dict, dict]:
        return (sensitivity_scan(model, specs, x, select, (0.25, 0.5), local="lstsq"),
                block_damage_scan(model, blocks, x))

    monkeypatch.setattr(prefix_cache, "CACHE_BUDGET_BYTES", 0)  # nothing replayed: every probe a full pass
    ref, ref_blocks = scans()
    monkeypatch.setattr(prefix_cache, "CACHE_BUDGET_BYTES", 1 << 30)
    got, got_blocks = scans()
    assert got.keys() == ref.keys() and len(got) == len(specs)
    for name, curve in ref.items():
        assert got[name].keys() == curve.keys()
        for k, v in curve.items():
            assert got[name][k] == pytest.approx(v, rel=1e-4, abs=1e-7)
    assert max(max(c.values()) for c in ref.values()) > 0
    for name, v in ref_blocks.items():
        assert got_blocks[name] == pytest.approx(v, rel=1e-4, abs=1e-7)
    assert min(ref_blocks.values()) > 0


class _InPlaceAfter(nn.Module):
    """A replayed output modified in place downstream (``y += 1``): replays must hand out copies."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y += 1.0
        return self.b(y)


@torch.no_grad()
def test_replays_survive_in_place_ops_downstream() -> None:
    torch.manual_seed(0)
    model = _InPlaceAfter().eval()
    x = torch.randn(2, 3, 8, 8)
    cache = PrefixCache(model, x)
    with cache.reuse_before("b"):
        first, second = model(x), model(x)
    torch.testing.assert_close(first, cache.output)
    torch.testing.assert_close(second, cache.output)


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(5, 4, 3, padding=1), nn.Conv2d(4, 4, 1)).eval()


def _calls(mod: nn.Module) -> tuple[list[int], object]:
    n = [0]
    return n, mod.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1))


def test_feature_collection_stops_after_the_last_feature_point() -> None:
    net = _chain()
    x = torch.randn(24, 3, 8, 8)
    _, specs, _ = discover_groups(net, x[:1])
    spec = next(s for s in specs if s.name == "0")
    tail, h = _calls(net[5])
    feats = collect_features(net, [spec], [x[:8], x[8:16], x[16:]], None)["0"]
    h.remove()
    with torch.no_grad():
        want = net[1](net[0](x)) if spec.feature_point.startswith("consumer") else net[0](x)
    torch.testing.assert_close(feats, want)
    assert tail[0] == 1  # the first batch runs whole (it checks the points are reached once), the rest stop


def test_least_squares_passes_stop_after_the_last_refitted_layer() -> None:
    dense = _chain()
    pruned = copy.deepcopy(dense)
    keep = [0, 2, 4]
    with torch.no_grad():
        pruned[0].weight.data = pruned[0].weight.data[keep].clone()
        pruned[0].bias.data = pruned[0].bias.data[keep].clone()
        pruned[2].weight.data = pruned[2].weight.data[:, keep].clone()
    pruned[0].out_channels = pruned[2].in_channels = len(keep)
    spec = GroupSpec(name="0", root=pruned[0], n_channels=6, consumers=[Consumer("2", pruned[2])])
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        before = (pruned[2](pruned[1](pruned[0](x))) - dense[2](dense[1](dense[0](x)))).pow(2).mean()
    tails = [_calls(dense[4]), _calls(pruned[4])]
    info = reconstruct_consumers(dense, pruned, [spec], x, None)
    for _, h in tails:
        h.remove()
    with torch.no_grad():
        after = (pruned[2](pruned[1](pruned[0](x))) - dense[2](dense[1](dense[0](x)))).pow(2).mean()
    assert set(info["layers"]) == {"2"} and after < before
    assert [t[0][0] for t in tails] == [1, 1]  # only the one-image order probes reach past the consumer
