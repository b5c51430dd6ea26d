"""SSC layer: special cases equal standard convs, conversion trains, export to standard ops is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from simprune.errors import InputError
from simprune.finetune import FinetuneConfig
from simprune.methods.ssc import (
    SSC_PLAN_FORMAT,
    GroupedPlusPointwise,
    SSConv2d,
    convert_to_ssc,
    export_ssc,
    load_ssc,
    ssc_conversions,
    ssc_plan,
    ssc_stats,
    ssc_train,
)


def _x(c: int = 8, hw: int = 9) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, c, hw, hw)


def test_depthwise_case_equals_depthwise_conv() -> None:
    ssc = SSConv2d(8, 8, 3, stride=2, padding=1, g=1, p=0)
    dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
    with torch.no_grad():
        for i in range(8):
            ssc.weight[i, i] = dw.weight[i, 0]
        ssc.bias.copy_(dw.bias)
    assert int(ssc.mask.sum()) == 8 * 9
    torch.testing.assert_close(ssc(_x()), dw(_x()), rtol=1e-5, atol=1e-5)
    assert ssc.density() == pytest.approx(1 / 8)


def test_groupwise_case_equals_grouped_conv() -> None:
    ssc = SSConv2d(8, 12, 3, padding=1, g=2, p=0, aligned=True, bias=False)
    gc = nn.Conv2d(8, 12, 3, padding=1, groups=4, bias=False)
    with torch.no_grad():
        for i in range(12):
            s = 2 * (i // 3)  # 3 filters per group of 2 input channels
            assert ssc.windows(i) == ([s, s + 1], [])
            ssc.weight[i, s:s + 2] = gc.weight[i]
    torch.testing.assert_close(ssc(_x()), gc(_x()), rtol=1e-5, atol=1e-5)
    assert ssc.effective_params() == 12 * 2 * 9


@pytest.mark.parametrize("k,pad", [(1, 0), (3, 1)])
def test_pointwise_case_equals_1x1_conv(k: int, pad: int) -> None:
    ssc = SSConv2d(8, 5, k, stride=2, padding=pad, g=0, p=8)
    pw = nn.Conv2d(8, 5, 1, stride=2)
    with torch.no_grad():
        c = (k - 1) // 2
        ssc.weight[:, :, c, c] = pw.weight[:, :, 0, 0]
        ssc.bias.copy_(pw.bias)
    torch.testing.assert_close(ssc(_x()), pw(_x()), rtol=1e-5, atol=1e-5)


def test_cyclic_windows_are_disjoint_and_masked() -> None:
    layer = SSConv2d(6, 4, 3, padding=1, g=2, p=3, channel_stride=5)
    for i in range(4):
        full, point = layer.windows(i)
        assert full[0] == (i * 5) % 6 and len(set(full) | set(point)) == 5
        assert layer.mask[i, full].sum() == 2 * 9
        assert layer.mask[i, point, 1, 1].sum() == 3 and layer.mask[i, point].sum() == 3
    # masked weights get no gradient
    layer(_x(6)).sum().backward()
    assert (layer.weight.grad[layer.mask == 0] == 0).all()
    assert (layer.weight.grad[layer.mask == 1] != 0).any()
    with pytest.raises(InputError):
        SSConv2d(4, 4, 3, g=3, p=2)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


@pytest.mark.parametrize("aligned,g,p", [(False, 2, 3), (True, 4, 0), (True, 2, 4), (False, 0, 1.0)])
def test_convert_train_export_exact(aligned: bool, g: int | float, p: int | float) -> None:
    torch.manual_seed(1)
    model = convert_to_ssc(_net(), g=g, p=p, aligned=aligned)
    assert not isinstance(model[0], SSConv2d)  # the stem stays dense
    ssc_layers = [m for m in model.modules() if isinstance(m, SSConv2d)]
    assert len(ssc_layers) == 3
    x = torch.randn(64, 3, 12, 12)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    before = [m.weight.detach().clone() for m in ssc_layers]
    res = ssc_train(model, TensorDataset(x, y),
                    FinetuneConfig(epochs=1, lr=0.05, batch_size=16, distill=False, max_steps_per_epoch=2),
                    device="cpu")
    assert len(res.history) == 1
    assert any(not torch.equal(b, m.weight) for b, m in zip(before, ssc_layers, strict=True))
    for m in ssc_layers:  # masked weights never move away from zero
        assert (m.weight[m.mask == 0] == 0).all()

    model.eval()
    exported = export_ssc(model).eval()
    assert not any(isinstance(m, SSConv2d) for m in exported.modules())
    torch.testing.assert_close(exported(x[:8]), model(x[:8]), rtol=1e-5, atol=1e-5)
    if aligned and p == 0:
        assert exported[3].groups == 2 and exported[6].groups == 4
    if aligned and p:
        assert isinstance(exported[3], GroupedPlusPointwise)
    ep = torch.export.export(exported, (x[:2],))
    torch.testing.assert_close(ep.module()(x[:2]), model(x[:2]), rtol=1e-5, atol=1e-5)

    stats = ssc_stats(model, x[:1])
    assert set(stats["layers"]) == {"3", "6", "9"}
    assert stats["params_effective"] < stats["params_dense"]
    assert stats["macs_effective"] < stats["macs_dense"]
    gi = 0 if g == 0 else g
    row = stats["layers"]["3"]
    pi = 8 if isinstance(p, float) else p
    assert row["params_effective"] == 16 * (gi * 9 + pi)
    assert row["macs_effective"] == 16 * (gi * 9 + pi) * 6 * 6


def test_convert_explicit_layers_and_errors() -> None:
    model = convert_to_ssc(_net(), g=2, p=2, layers=["6"], reinit=False)
    assert isinstance(model[6], SSConv2d) and not isinstance(model[3], SSConv2d)
    with pytest.raises(InputError):
        convert_to_ssc(_net(), g=2, p=2, layers=["0"])  # the stem
    with pytest.raises(InputError):
        convert_to_ssc(_net(), g=2, p=2, layers=["nope"])
    pred = convert_to_ssc(_net(), g=1, p=0, layers=lambda name, conv: conv.kernel_size == (1, 1))
    assert [n for n, m in pred.named_modules() if isinstance(m, SSConv2d)] == ["9"]


@pytest.mark.parametrize("aligned,g,p", [(False, 0.25, 0.125), (True, 4, 0), (True, 2, 4)])
def test_plan_rebuilds_the_exported_model(aligned: bool, g: int | float, p: int | float) -> None:
    torch.manual_seed(2)
    model = convert_to_ssc(_net(), g=g, p=p, aligned=aligned)
    choices = ssc_conversions(_net(), g, p, aligned=aligned)
    plan = ssc_plan(model, arch=None, input_size=(3, 12, 12))
    assert plan["format"] == SSC_PLAN_FORMAT
    assert [(e["layer"], e["g"], e["p"]) for e in plan["layers"]] == [(n, gi, pi) for n, _c, gi, pi in choices]
    exported = export_ssc(model).eval()
    state = {k: v.clone() for k, v in exported.state_dict().items()}
    rebuilt = load_ssc(plan, state, model=_net())
    x = torch.randn(3, 3, 12, 12)
    torch.testing.assert_close(rebuilt(x), exported(x))
    with pytest.raises(InputError):
        load_ssc(plan, state)  # no arch in the plan and no model given
    with pytest.raises(InputError):
        load_ssc({**plan, "format": "simprune-plan/1"}, state, model=_net())
