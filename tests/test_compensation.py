"""Compensation: folding removed channels, least-squares reconstruction, and the engine with it on/off."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from simprune.compensation import fold_removed, merge_map, reconstruct_consumers
from simprune.methods.base import ChannelGroup, Consumer, Selection
from simprune.pruning.groups import GroupSpec
from simprune.pruning.phases import prune


def _features_with_affine_copy(alpha: float, beta: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(16, 4, 5, 5, generator=g)
    f[:, 2] = alpha * f[:, 0] + beta  # channel 2 is an affine function of channel 0
    return f


def _slice_in(conv: nn.Conv2d, keep: list[int]) -> nn.Conv2d:
    out = nn.Conv2d(len(keep), conv.out_channels, conv.kernel_size, bias=conv.bias is not None)
    out.weight.data = conv.weight.data[:, keep].clone()
    if conv.bias is not None:
        out.bias.data = conv.bias.data.clone()
    return out


@pytest.mark.parametrize("given_merge", [False, True])
def test_fold_into_bias_is_exact(given_merge: bool) -> None:
    torch.manual_seed(0)
    f = _features_with_affine_copy(-1.7, 0.4)
    consumer = nn.Conv2d(4, 3, 1, bias=True)
    dense_out = consumer(f).detach()
    group = ChannelGroup(name="p", conv=nn.Conv2d(1, 4, 1), bn=None, n_channels=4,
                         consumers=[Consumer("c", consumer)], features=f)
    keep = [0, 1, 3]
    merge = {2: (0, -1.7, 0.4)} if given_merge else None
    sel = Selection(keep=torch.tensor(keep), merge=merge)
    mapping = merge_map(group, sel)
    assert mapping[2][0] == 0 and mapping[2][1] == pytest.approx(-1.7, abs=1e-5)
    info = fold_removed(group, sel)
    assert info["folded"] == 1 and info["constant"] == {"c": "bias"}
    pruned_out = _slice_in(consumer, keep)(f[:, keep])
    assert torch.allclose(pruned_out, dense_out, atol=1e-4)


def test_fold_into_following_batchnorm_is_exact() -> None:
    torch.manual_seed(0)
    f = _features_with_affine_copy(0.8, -1.1)
    consumer = nn.Conv2d(4, 3, 1, bias=False)
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    dense_out = bn(consumer(f)).detach()
    group = ChannelGroup(name="p", conv=nn.Conv2d(1, 4, 1), bn=None, n_channels=4,
                         consumers=[Consumer("c", consumer)], features=f, extra={"consumer_bns": {"c": bn}})
    info = fold_removed(group, Selection(keep=torch.tensor([0, 1, 3])))
    assert info["constant"] == {"c": "bn"}
    pruned_out = bn(_slice_in(consumer, [0, 1, 3])(f[:, [0, 1, 3]]))
    assert torch.allclose(pruned_out, dense_out, atol=1e-4)
    # without a bias or a BN the constant is dropped, and that is reported (the linear part still folds)
    consumer2 = nn.Conv2d(4, 3, 1, bias=False)
    group2 = ChannelGroup(name="p", conv=nn.Conv2d(1, 4, 1), bn=None, n_channels=4,
                          consumers=[Consumer("c", consumer2)], features=f)
    assert fold_removed(group2, Selection(keep=torch.tensor([0, 1, 3])))["constant"] == {"c": "dropped"}


def test_fold_respects_min_r2() -> None:
    g = torch.Generator().manual_seed(1)
    f = torch.randn(32, 3, 4, 4, generator=g)  # independent channels: r^2 ~ 0
    consumer = nn.Conv2d(3, 2, 1)
    w0 = consumer.weight.detach().clone()
    group = ChannelGroup(name="p", conv=nn.Conv2d(1, 3, 1), bn=None, n_channels=3,
                         consumers=[Consumer("c", consumer)], features=f)
    info = fold_removed(group, Selection(keep=torch.tensor([0, 1])), min_r2=0.5)
    assert info["skipped_low_r2"] == 1 and info["folded"] == 0
    assert torch.equal(consumer.weight, w0)


def _two_layer(relu: bool) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 6, 3, padding=1)]
    if relu:
        layers.append(nn.ReLU())
    layers.append(nn.Conv2d(6, 4, 3, padding=1))
    return nn.Sequential(*layers).eval()


def _remove_out_channels(net: nn.Sequential, keep: list[int]) -> nn.Sequential:
    p = copy.deepcopy(net)
    first, last = p[0], p[len(p) - 1]
    first.weight.data = first.weight.data[keep].clone()
    first.bias.data = first.bias.data[keep].clone()
    first.out_channels = len(keep)
    last.weight.data = last.weight.data[:, keep].clone()
    last.in_channels = len(keep)
    return p


def _spec(net: nn.Sequential) -> list[GroupSpec]:
    last = str(len(net) - 1)
    return [GroupSpec(name="0", root=net[0], n_channels=6, consumers=[Consumer(last, net[len(net) - 1])])]


def test_lstsq_recovers_linear_combination_exactly() -> None:
    dense = _two_layer(relu=False)
    with torch.no_grad():  # conv1's channel 5 = 0.7 * channel 1 - 0.2 * channel 2 (bias included)
        dense[0].weight[5] = 0.7 * dense[0].weight[1] - 0.2 * dense[0].weight[2]
        dense[0].bias[5] = 0.7 * dense[0].bias[1] - 0.2 * dense[0].bias[2]
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    keep = [0, 1, 2, 3, 4]
    pruned = _remove_out_channels(dense, keep)
    y = dense(x).detach()
    before = (pruned(x) - y).pow(2).mean().item()
    info = reconstruct_consumers(dense, pruned, _spec(pruned), x, torch.device("cpu"), ridge=1e-9)
    after = (pruned(x) - y).pow(2).mean().item()
    assert info["layers"]["1"]["rel_err_after"] < 1e-6
    assert before > 1e-3 and after < 1e-6 * max(1.0, y.pow(2).mean().item())


def test_lstsq_reduces_error_with_nonlinearity() -> None:
    dense = _two_layer(relu=True)
    x = torch.randn(16, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    pruned = _remove_out_channels(dense, [0, 2, 4])
    y = dense(x).detach()
    before = (pruned(x) - y).pow(2).mean().item()
    reconstruct_consumers(dense, pruned, _spec(pruned), [(x[:8], None), (x[8:], None)], None)
    after = (pruned(x) - y).pow(2).mean().item()
    assert after < 0.7 * before


def _trained_tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small conv net trained (deterministically) to imitate a fixed random teacher on 8x8 inputs."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(768, 3, 8, 8, generator=gen)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                            nn.Linear(32, 4))
    with torch.no_grad():
        y = teacher(x).argmax(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 4),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        i = (step * 64) % 512
        loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


@pytest.fixture
def one_thread():
    """Tiny tensors run faster on one thread (and the shared machine is busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_engine_compensation_beats_none_on_trained_model(one_thread: None) -> None:
    model, x, y = _trained_tiny()
    calib, test = x[:512], x[512:]
    with torch.no_grad():
        ref = model(test)

    def fidelity(comp: dict[str, bool] | None) -> tuple[float, float]:
        pm, rep = prune(model, x[:2], "l1", pruning_ratio=0.5, calib=calib, compensation=comp)
        with torch.no_grad():
            out = pm(test)
        off = {"block_recon": False, "output_recon": False}
        assert rep["compensation"] == ({"fold": False, "lstsq": False, "bn": False} | off if comp
                                       else {"fold": True, "lstsq": True, "bn": True} | off)
        return (out - ref).pow(2).mean().item(), (out.argmax(1) == ref.argmax(1)).float().mean().item()

    mse_off, agree_off = fidelity({"fold": False, "lstsq": False, "bn": False})
    mse_on, agree_on = fidelity(None)
    assert mse_on < 0.5 * mse_off
    assert agree_on >= agree_off
    # the model itself is untouched
    with torch.no_grad():
        assert torch.equal(model(test), ref)


def test_sequential_pruning_sees_pruned_features_and_replays(one_thread: None) -> None:
    from simprune.methods.recon import Reconstruction
    from simprune.plan import load_pruned, make_plan

    model, x, _ = _trained_tiny()
    calib, test = x[:512], x[512:]
    seen: list[tuple[str, bool, bool]] = []

    class Spy(Reconstruction):
        def select(self, group, n_keep):  # type: ignore[no-untyped-def]
            target = group.extra.get("target_features")
            same = target is not None and torch.equal(target, group.features)
            seen.append((group.name, target is not None, same))
            return super().select(group, n_keep)

    with torch.no_grad():
        ref = model(test)
    pm, rep = prune(model, x[:2], Spy(), pruning_ratio=0.5, calib=calib,
                    compensation_options={"sequential": True, "sequential_images": 128})
    off, _ = prune(model, x[:2], "l1", pruning_ratio=0.5, calib=calib,
                   compensation={"fold": False, "lstsq": False, "bn": False})
    # groups are visited in execution order; the first sees the dense model's features (nothing pruned yet)
    assert [s[0] for s in seen] == [entry["layer"] for entry in rep["plan"]["layers"]] == ["0", "3"]
    assert seen[0] == ("0", True, True) and seen[1][1] and not seen[1][2]
    assert rep["compensation_options"]["sequential"] is True
    with torch.no_grad():
        mse_seq = (pm(test) - ref).pow(2).mean().item()
        mse_off = (off(test) - ref).pow(2).mean().item()
    assert mse_seq < 0.5 * mse_off
    # the plan replays to the same model
    plan = make_plan(rep, arch=None, input_size=(3, 8, 8))
    rebuilt = load_pruned(plan, {k: v.clone() for k, v in pm.state_dict().items()}, model=copy.deepcopy(model))
    with torch.no_grad():
        assert torch.allclose(rebuilt(test), pm(test), atol=1e-5)


def test_compensation_switches_validated(one_thread: None) -> None:
    from simprune.errors import InputError

    model, x, _ = _trained_tiny()
    with pytest.raises(InputError, match="unknown compensation"):
        prune(model, x[:2], "l1", pruning_ratio=0.5, calib=x[:64], compensation={"folding": False})
    for key in ("output_recon_augment", "output_recon_mix", "output_recon_keep"):
        with pytest.raises(InputError, match=f"option {key} must be one of"):
            prune(model, x[:2], "l1", pruning_ratio=0.5, calib=x[:64], compensation_options={key: "blend"})
    _, rep = prune(model, x[:2], "l1", pruning_ratio=0.5, calib=x[:64], compensation={"sequential": True})
    assert rep["compensation_options"]["sequential"] is True and "sequential" not in rep["compensation"]


@pytest.mark.parametrize("arch", ["cifar_mobilenet_v2", "regnet_y_400mf"])
def test_sequential_recon_on_depthwise_and_grouped_archs(arch: str, one_thread: None) -> None:
    """Depthwise-coupled (MobileNetV2) and grouped-conv (RegNet) groups go through sequential pruning."""
    from simprune.plan import load_pruned, make_plan
    from simprune.pruning.batchnorm import reestimate_bn
    from simprune.zoo import build_model

    size = (3, 32, 32)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    reestimate_bn(model, [torch.randn(8, *size)])
    model.eval()
    calib = torch.randn(16, *size)
    pm, rep = prune(model, calib[:1], "recon", pruning_ratio=0.3, calib=calib, compensation={"sequential": True})
    assert rep["params_after"] < rep["params_before"] and rep["compensation_options"]["sequential"]
    x = torch.randn(2, *size)
    plan = make_plan(rep, arch=arch, input_size=size, num_classes=10)
    rebuilt = load_pruned(plan, {k: v.clone() for k, v in pm.state_dict().items()})
    with torch.no_grad():
        out = pm(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        assert torch.allclose(rebuilt(x), out, atol=1e-5)


def test_lstsq_refits_convs_concatenated_at_an_offset(one_thread: None) -> None:
    """A group spanning a concat (conv ``a``'s channels at 0..11, ``b``'s last conv at 12..31) keeps channels in
    the group's index space: each conv's kept outputs are mapped back to its own (regression: an index past
    ``a``'s 12 channels)."""
    from onnx_nets import HandCNN, randomize_bn

    from simprune.pruning.groups import discover_groups, module_keep

    torch.manual_seed(0)
    model = randomize_bn(HandCNN())
    x = torch.randn(1, 3, 32, 32)
    spec = next(s for s in discover_groups(model, x)[1] if "b.3" in s.out_index)
    assert spec.out_index["b.3"] == list(range(12, 32)) and spec.out_index["a.0"] == list(range(12))
    assert module_keep(spec, "b.3", [1, 12, 20, 31]) == [0, 8, 19] and module_keep(spec, "a.0", [1, 12]) == [1]
    assert module_keep(spec, spec.name, [1, 12]) == [1, 12]  # the root's own channels are the group's
    calib = torch.randn(48, 3, 32, 32)
    pruned, report = prune(model, x, "l1", target_flops_reduction=0.3, calib=calib)
    assert report["compensation"]["lstsq"], report["compensation"]
    with torch.no_grad():
        assert pruned(calib).shape == (48, 7)


def test_sequential_is_skipped_only_where_it_cannot_change_the_model(one_thread: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """l1 inside residual blocks: sequential selection would choose and fit exactly what one-shot does, so it is
    skipped (and the report says so); in a plain chain each layer is the previous group's consumer and it runs;
    a criterion that reads feature maps always runs it."""
    from simprune.methods.registry import get_criterion
    from simprune.pruning import phases
    from simprune.pruning.batchnorm import reestimate_bn
    from simprune.pruning.sequential import order_free
    from simprune.zoo import build_model

    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10)
    reestimate_bn(model, [torch.randn(16, 3, 16, 16)])
    model.eval()
    calib = torch.randn(32, 3, 16, 16)
    kw: dict = {"pruning_ratio": 0.5, "calib": calib, "compensation": {"sequential": True}}
    skipped, rep = prune(model, calib[:1], "l1", **kw)
    assert rep["sequential"] == {"ran": False, "skipped_as_order_free": True}
    monkeypatch.setattr(phases, "order_free", lambda *a: False)  # force the sequential path
    forced, rep_forced = prune(model, calib[:1], "l1", **kw)
    assert rep_forced["sequential"] == {"ran": True, "skipped_as_order_free": False}
    assert rep["plan"]["layers"] == rep_forced["plan"]["layers"]
    a, b = skipped.state_dict(), forced.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    monkeypatch.undo()

    chain, x, _ = _trained_tiny()
    _, rep = prune(chain, x[:2], "l1", pruning_ratio=0.5, calib=x[:64], compensation={"sequential": True})
    assert rep["sequential"] == {"ran": True, "skipped_as_order_free": False}  # layer "3" consumes group "0"
    assert not order_free(get_criterion("qsfm"), [], {}, model)  # reads feature maps: never skipped
