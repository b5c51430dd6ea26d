"""Sensitivity-based allocation: meets the FLOPs target and protects the groups whose pruning hurts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simprune.errors import InputError
from simprune.flops import count_model
from simprune.pruning.allocation import sensitivity_keep
from simprune.pruning.groups import FlopsModel, discover_groups
from simprune.pruning.phases import prune


class TwoBranchNet(nn.Module):
    """Two identical branches; ``quiet`` is scaled down so that pruning it barely changes the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.loud = nn.Conv2d(3, 16, 3, padding=1)
        self.loud2 = nn.Conv2d(16, 8, 3, padding=1)
        self.quiet = nn.Conv2d(3, 16, 3, padding=1)
        self.quiet2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            self.quiet2.weight.mul_(0.01)
            self.fc.weight.mul_(8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.loud2(torch.relu(self.loud(x)))
        b = self.quiet2(torch.relu(self.quiet(x)))
        return self.fc(torch.cat([a, b], 1).mean((2, 3)))


def _keep(report: dict, name: str) -> int:
    return next(len(p["keep"]) for p in report["plan"]["layers"] if p["layer"] == name)


@pytest.mark.parametrize("local", ["lstsq", "mean"])
def test_sensitivity_meets_target_and_protects_sensitive_group(local: str) -> None:
    torch.manual_seed(0)
    model = TwoBranchNet().eval()
    calib = torch.randn(32, 3, 12, 12)
    pruned, rep = prune(model, calib[:1], "l1", target_flops_reduction=0.4, calib=calib,
                        allocation="sensitivity", allocation_options={"n_images": 16, "local": local})
    assert abs(rep["flops_reduction"] - 0.4) <= 0.01
    assert rep["allocation"] == "sensitivity"
    assert rep["sensitivity"]["loud"] and rep["sensitivity"]["quiet"]
    assert max(rep["sensitivity"]["loud"].values()) > 10 * max(rep["sensitivity"]["quiet"].values())
    loud = _keep(rep, "loud") if any(p["layer"] == "loud" for p in rep["plan"]["layers"]) else 16
    assert loud > _keep(rep, "quiet")
    assert _keep(rep, "quiet") >= 2  # min_keep_frac 0.125 of 16
    with torch.no_grad():
        assert pruned(calib[:2]).shape == (2, 10)
    _, again = prune(model, calib[:1], "l1", target_flops_reduction=0.4, calib=calib, allocation="sensitivity",
                     allocation_options={"damage": rep["sensitivity"]})
    assert [len(p["keep"]) for p in again["plan"]["layers"]] == [len(p["keep"]) for p in rep["plan"]["layers"]]
    with pytest.raises(InputError, match="lacks the groups"):
        prune(model, calib[:1], "l1", target_flops_reduction=0.4, calib=calib, allocation="sensitivity",
              allocation_options={"damage": {"loud": rep["sensitivity"]["loud"]}})


def test_sensitivity_keep_follows_damage_curves() -> None:
    model = TwoBranchNet().eval()
    x = torch.randn(1, 3, 12, 12)
    before = count_model(model, x)
    _, specs, _ = discover_groups(model, x)
    fm = FlopsModel(before["per_layer"], dict(model.named_modules()), specs)
    cheap = {16: 0.0, 8: 0.01, 2: 0.02}
    costly = {16: 0.0, 8: 5.0, 2: 9.0}
    damage = {s.name: (costly if s.name.startswith("loud") else cheap) for s in specs}
    damage.update({s.name: {s.n_channels: 0.0, s.n_channels // 2: 1.0, 1: 2.0} for s in specs
                   if s.n_channels != 16})
    keep = sensitivity_keep(specs, damage, fm, before["flops"], 0.3)
    red = 1 - fm.flops(keep) / before["flops"]
    assert abs(red - 0.3) <= 0.02  # one channel of this tiny net is ~1% of its FLOPs
    assert keep["loud"] == 16 and keep["quiet"] < 16
    with pytest.raises(InputError):
        sensitivity_keep(specs, damage, fm, before["flops"], 0.97, min_keep_frac=0.5)


def test_sensitivity_needs_calibration_data() -> None:
    model = TwoBranchNet().eval()
    with pytest.raises(InputError, match="calibration"):
        prune(model, torch.randn(1, 3, 12, 12), "l1", target_flops_reduction=0.3, allocation="sensitivity")
    with pytest.raises(InputError, match="unknown allocation options"):
        prune(model, torch.randn(1, 3, 12, 12), "l1", target_flops_reduction=0.3, allocation="sensitivity",
              calib=torch.randn(4, 3, 12, 12), allocation_options={"bogus": 1})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_damage_choice_matches_brute_force(seed: int) -> None:
    import itertools

    from simprune.pruning.allocation import _min_damage_choice

    gen = torch.Generator().manual_seed(seed)
    options = {}
    for g in range(4):
        n = 5
        flops = torch.rand(n, generator=gen).sort().values * 100  # saved FLOPs grow as fewer are kept
        dmg = torch.rand(n, generator=gen).sort().values  # so does the damage (non-convex in general)
        options[f"g{g}"] = [(n - i, float(dmg[i]) if i else 0.0, float(flops[i]) if i else 0.0) for i in range(n)]
    need = float(torch.rand(1, generator=gen)) * 150 + 20
    best, best_keep = float("inf"), None
    for combo in itertools.product(*options.values()):
        if sum(o[2] for o in combo) >= need and sum(o[1] for o in combo) < best - 1e-12:
            best, best_keep = sum(o[1] for o in combo), {k: o[0] for k, o in zip(options, combo, strict=True)}
    keep = _min_damage_choice(options, need)
    chosen = [next(o for o in options[k] if o[0] == keep[k]) for k in options]
    assert sum(o[2] for o in chosen) >= need
    assert sum(o[1] for o in chosen) == pytest.approx(best, abs=1e-9), (keep, best_keep)


def _spec(name: str, n: int) -> object:
    from simprune.pruning.groups import GroupSpec

    return GroupSpec(name=name, root=nn.Identity(), n_channels=n)


@pytest.mark.parametrize("seed", [0, 1])
def test_budgeted_keep_with_blocks_matches_brute_force(seed: int) -> None:
    """Blocks choose between their inner groups' counts and a drop; the optimum is the brute-force one."""
    import itertools

    from simprune.pruning.allocation import BlockOption, budgeted_keep

    gen = torch.Generator().manual_seed(seed)
    specs = [_spec(f"g{i}", 4) for i in range(4)]
    damage = {s.name: {4: 0.0, **{k: float(torch.rand(1, generator=gen)) * (5 - k) for k in (1, 2, 3)}}
              for s in specs}
    per_ch = {s.name: float(torch.rand(1, generator=gen)) * 10 + 1 for s in specs}

    def saving(s: object, k: int) -> float:
        return per_ch[s.name] * (s.n_channels - k)  # type: ignore[attr-defined]

    blocks = [BlockOption("b0", ("g0", "g1"), float(torch.rand(1, generator=gen)) * 3, 60.0),
              BlockOption("b1", ("g2",), float(torch.rand(1, generator=gen)) * 3, 30.0)]
    need = float(torch.rand(1, generator=gen)) * 60 + 20
    keep, dropped = budgeted_keep(specs, damage, saving, need, min_keep_frac=0.25, blocks=blocks)

    def total(k: dict[str, int], drop: set[str]) -> tuple[float, float]:
        gone = {g for b in blocks if b.name in drop for g in b.groups}
        dmg = sum(damage[n][k[n]] for n in k if n not in gone) + sum(b.damage for b in blocks if b.name in drop)
        sv = sum(saving(s, k[s.name]) for s in specs if s.name not in gone) + sum(
            b.saved for b in blocks if b.name in drop)
        return dmg, sv

    best = float("inf")
    for counts in itertools.product((1, 2, 3, 4), repeat=4):
        for drop in ({}, {"b0"}, {"b1"}, {"b0", "b1"}):
            d, sv = total(dict(zip([s.name for s in specs], counts, strict=True)), set(drop))
            if sv >= need:
                best = min(best, d)
    d, sv = total(keep, set(dropped))
    assert sv >= need and d == pytest.approx(best, abs=1e-9)


def test_budgeted_keep_just_short_of_the_need_saves_the_most_it_can() -> None:
    """A need within the 1% tolerance but above what every cut together saves (a latency target whose
    profile barely allows it) gets the most saving choice, never the unpruned model."""
    from simprune.pruning.allocation import budgeted_keep

    specs = [_spec(f"g{i}", 8) for i in range(3)]
    damage = {s.name: {8: 0.0, 4: 0.5, 1: 2.0} for s in specs}
    most = 3 * 7.0  # every group at its smallest count (1 of 8) saves 7

    def saving(s: object, k: int) -> float:
        return float(s.n_channels - k)  # type: ignore[attr-defined]

    keep, dropped = budgeted_keep(specs, damage, saving, most * 1.005, min_keep_frac=0.125)
    assert keep == {s.name: 1 for s in specs} and dropped == []
    with pytest.raises(InputError, match="out of reach"):
        budgeted_keep(specs, damage, saving, most * 1.05, min_keep_frac=0.125)


def test_min_ratio_meeting_is_the_smallest_ratio() -> None:
    from simprune.pruning.allocation import min_ratio_meeting

    ratio, keep = min_ratio_meeting(lambda r: {"g": round(100 * (1 - r))}, lambda k: k["g"] <= 40)
    assert keep["g"] == 40 and 0.59 < ratio < 0.61
    with pytest.raises(InputError, match="out of reach"):
        min_ratio_meeting(lambda r: {"g": 100}, lambda k: False)


def test_scans_run_channels_last_with_the_same_damages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sensitivity and block scans run channels-last (faster convolutions); damages, the chosen widths and
    blocks match a contiguous scan, and the models come back contiguous."""
    from simprune import compute
    from simprune.pruning import phases
    from simprune.zoo import build_model

    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so that the damages differ per group
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    calib = torch.randn(24, 3, 16, 16)
    kw = {"target_flops_reduction": 0.4, "calib": calib, "allocation": "sensitivity",
          "allocation_options": {"n_images": 16, "depth": True, "fractions": (0.25, 0.5, 0.75)}}
    pruned, rep = prune(model, calib[:1], "l1", **kw)
    assert all(p.is_contiguous() for p in pruned.parameters()) and all(p.is_contiguous() for p in model.parameters())
    monkeypatch.setattr(phases, "channels_last",
                        lambda *models, enabled=True: compute.channels_last(*models, enabled=False))
    _, plain = prune(model, calib[:1], "l1", **kw)
    for group, curve in plain["sensitivity"].items():
        for kept, dmg in curve.items():
            assert rep["sensitivity"][group][kept] == pytest.approx(dmg, rel=1e-3, abs=1e-7)
    assert plain["block_sensitivity"]
    assert rep["block_sensitivity"] == pytest.approx(plain["block_sensitivity"], rel=1e-3, abs=1e-7)
    assert [len(p["keep"]) for p in rep["plan"]["layers"]] == [len(p["keep"]) for p in plain["plan"]["layers"]]
