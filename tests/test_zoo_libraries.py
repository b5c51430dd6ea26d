"""torchvision/<name> and timm/<name> architectures: lazy catalogue, checkpoint-driven building, pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from simprune.errors import InputError
from simprune.pipeline import PruneJob, run_prune_job
from simprune.zoo import build_for_state_dict, get_arch, list_archs
from simprune.zoo.libraries import (
    TIMM_REPRESENTATIVES,
    TORCHVISION_REPRESENTATIVES,
    VERIFIED_TIMM,
    VERIFIED_TORCHVISION,
    torchvision_family,
)

HW = 64


def test_catalogue_lists_every_library_model_without_building_any(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("listing must not build a model")

    monkeypatch.setattr(torchvision.models, "get_model", refuse)
    monkeypatch.setattr(timm, "create_model", refuse)
    names = {a.name for a in list_archs(libraries=True)}
    assert {f"torchvision/{n}" for n in torchvision.models.list_models(module=torchvision.models)} <= names
    assert {f"timm/{n}" for n in timm.list_models()} <= names
    assert "cifar_resnet56" in names and "resnet18" in names  # the existing zoo names keep working
    found = list_archs("GhostNet", libraries=True)
    assert found and all("ghostnet" in a.name for a in found)


def test_entries_carry_the_library_metadata() -> None:
    b7 = get_arch("torchvision/efficientnet_b7")
    assert b7.input_size == (3, 600, 600) and b7.verified and b7.family == "torchvision:efficientnet"
    vit = get_arch("torchvision/vit_b_16")
    assert not vit.verified
    cfg = timm.get_pretrained_cfg("convnext_atto")
    atto = get_arch("timm/convnext_atto")
    assert atto.input_size == tuple(cfg.input_size) and atto.mean == tuple(cfg.mean) and atto.verified
    with pytest.raises(KeyError, match="timm has no model"):
        get_arch("timm/not_a_model")


def test_verified_families_have_representatives() -> None:
    assert set(TORCHVISION_REPRESENTATIVES) == VERIFIED_TORCHVISION
    assert set(TIMM_REPRESENTATIVES) == VERIFIED_TIMM
    for fam, name in TORCHVISION_REPRESENTATIVES.items():
        assert torchvision_family(name) == fam and get_arch(f"torchvision/{name}").verified
    for name in TIMM_REPRESENTATIVES.values():
        assert get_arch(f"timm/{name}").verified


def test_classes_and_channels_come_from_the_checkpoint() -> None:
    src = timm.create_model("resnet10t", pretrained=False, num_classes=5, in_chans=1)
    model = build_for_state_dict("timm/resnet10t", src.state_dict())
    assert model.get_classifier().out_features == 5 and model(torch.randn(1, 1, HW, HW)).shape == (1, 5)
    tv = torchvision.models.resnet18(num_classes=4)
    model = build_for_state_dict("torchvision/resnet18", tv.state_dict())
    assert model.fc.out_features == 4
    with pytest.raises(InputError, match="does not match"):
        build_for_state_dict("torchvision/resnet34", tv.state_dict())


def _weights(arch: str, path: Path) -> Path:
    torch.manual_seed(0)
    model = get_arch(arch).builder(num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("name", list(TIMM_REPRESENTATIVES.values()) + ["tv:mobilenet_v3_small"])
def test_library_model_prunes_with_verified_exports(tmp_path: Path, name: str, one_thread_module: None) -> None:
    arch = f"torchvision/{name[3:]}" if name.startswith("tv:") else f"timm/{name}"
    job = PruneJob.build(arch=arch, weights=_weights(arch, tmp_path / "w.safetensors"), method="l1",
                         target_flops_reduction=0.3, device="cpu", input_size=(3, HW, HW),
                         exports=("onnx", "safetensors"))
    report = run_prune_job(job, tmp_path / "out")
    assert 0.25 <= report["flops_reduction"] <= 0.35, report["flops_reduction"]
    by_fmt = {e["format"]: e for e in report["exports"]}
    assert by_fmt["plan"]["verified"] is True and by_fmt["onnx"]["max_abs_diff"] is not None


def test_mnasnet_loads_a_state_dict_without_metadata() -> None:
    """torchvision's MNASNet refuses a state dict without ``_metadata`` (safetensors files have none)."""
    src = torchvision.models.mnasnet0_5(num_classes=3)
    plain = {k: v.clone() for k, v in src.state_dict().items()}  # a plain dict: no _metadata attribute
    model = build_for_state_dict("torchvision/mnasnet0_5", plain)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), src.eval()(x))


def test_channel_shuffle_groups_are_kept_whole_and_the_rest_prunes(one_thread_module: None) -> None:
    """Torch-Pruning cannot map channels through ShuffleNet's channel shuffle (it crashed building the graph):
    the groups through it are kept whole with that reason, the branches' inner channels prune, the plan replays."""
    import copy

    from simprune.pruning.phases import prune
    from simprune.pruning.surgery import apply_plan

    torch.manual_seed(0)
    model = get_arch("torchvision/shufflenet_v2_x0_5").builder(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune(copy.deepcopy(model), x, "l1", target_flops_reduction=0.2)
    assert any("Torch-Pruning cannot map its channels" in s["reason"] for s in report["skipped_groups"])
    assert 0.18 <= report["flops_reduction"] <= 0.22
    replayed = apply_plan(model, x, report["plan"]["layers"])
    replayed.load_state_dict(pruned.state_dict())
    xs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (replayed.eval()(xs) - pruned.eval()(xs)).abs().max() < 1e-5


def test_ghost_module_coupling_is_pruned_in_chunks() -> None:
    """A Ghost module concatenates its primary conv with a depthwise conv of it: channel i drags i + n/2 along.
    Those groups are chunked, so the FLOPs model is exact (a 30% target removed ~44% before)."""
    from simprune.flops import count_model
    from simprune.pruning.groups import FlopsModel, discover_groups
    from simprune.pruning.surgery import remove_channels

    torch.manual_seed(0)
    model = get_arch("timm/ghostnet_050").builder(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    before = count_model(model, x)
    dg, specs, _ = discover_groups(model, x)
    assert any(s.ch_groups == 2 for s in specs)
    fm = FlopsModel(before["per_layer"], dict(model.named_modules()), specs)
    keep = {}
    for s in specs:
        size = s.n_channels // s.ch_groups
        per = max(1, size - max(1, size // 4))
        keep[s.name] = [p + j * size for j in range(s.ch_groups) for p in range(per)]
    predicted = fm.flops({name: len(k) for name, k in keep.items()})
    for s in specs:
        remove_channels(dg, s.root, keep[s.name])
    assert count_model(model, x)["flops"] == predicted


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_vision_transformers_keep_their_token_stream_and_prune_the_mlps(library: str,
                                                                        one_thread_module: None) -> None:
    """A ViT reshapes its token stream to a fixed width (torchvision's ``hidden_dim``, nn.MultiheadAttention's
    ``embed_dim``, timm's ``qkv`` heads): pruning it broke the forward. The catalogue's builders declare those
    layers frozen, so the MLPs' hidden layers prune and the model runs (small ViTs of the same classes)."""
    import copy

    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from torchvision.models.vision_transformer import VisionTransformer

    from simprune.pruning.phases import prune
    from simprune.zoo.libraries import _plain_state_dicts, _timm_frozen

    torch.manual_seed(0)
    if library == "torchvision":
        model = _plain_state_dicts(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                     hidden_dim=32, mlp_dim=128, num_classes=5))
        stream = "conv_proj"
    else:
        model = _timm_frozen(TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
                                     num_classes=5))
        stream = "patch_embed.proj"
    with torch.no_grad():
        for p in model.parameters():  # torchvision zero-initialises the head
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune(copy.deepcopy(model.eval()), x, "l1", target_flops_reduction=0.2)
    assert any("simprune_frozen_layers" in s["reason"] for s in report["skipped_groups"]), report["skipped_groups"]
    pruned_layers = {layer["layer"] for layer in report["plan"]["layers"]
                     if len(layer["keep"]) < layer["channels_before"]}
    assert pruned_layers and all("mlp" in name for name in pruned_layers), pruned_layers
    assert pruned.get_submodule(stream).out_channels == 32  # the token stream kept whole
    assert 0.18 <= report["flops_reduction"] <= 0.22
    with torch.no_grad():
        assert pruned.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("family", ["swin", "maxvit"])
def test_windowed_transformers_prune_their_mlps_without_tracing_the_windows(family: str,
                                                                           one_thread_module: None) -> None:
    """Swin and MaxViT reshape the token stream into windows and heads; Torch-Pruning's index mapping through
    those reshapes ran out of memory on the real models (tens of GB). The catalogue's builder declares every layer
    writing the stream frozen: the MLP hidden layers (and MaxViT's MBConv expansions) prune, the model runs."""
    import copy
    from functools import partial

    from torchvision.models.maxvit import MaxVit
    from torchvision.models.swin_transformer import SwinTransformer

    from simprune.pruning.phases import prune
    from simprune.zoo.libraries import _plain_state_dicts

    torch.manual_seed(0)
    if family == "swin":
        model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                window_size=[4, 4], num_classes=5)
        hw, stream, allowed = 32, "features.0.0", ("mlp.0", "mlp.3")
    else:
        model = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16],
                       block_layers=[1], head_dim=8, stochastic_depth_prob=0.0, num_classes=5,
                       norm_layer=partial(torch.nn.BatchNorm2d, eps=1e-3, momentum=0.01))
        hw, stream, allowed = 32, "stem.0.0", ("conv_a", "conv_b", "squeeze_excitation", "mlp_layer")
    model = _plain_state_dicts(model).eval()
    x = torch.randn(1, 3, hw, hw)
    pruned, report = prune(copy.deepcopy(model), x, "l1", target_flops_reduction=0.15)
    assert any("simprune_untraced_layers" in s["reason"] for s in report["skipped_groups"])
    pruned_layers = {layer["layer"] for layer in report["plan"]["layers"]
                     if len(layer["keep"]) < layer["channels_before"]}
    assert pruned_layers and all(any(a in name for a in allowed) for name in pruned_layers), pruned_layers
    assert pruned.get_submodule(stream).out_channels == model.get_submodule(stream).out_channels
    assert report["flops_reduction"] > 0.1
    with torch.no_grad():
        assert pruned.eval()(torch.randn(2, 3, hw, hw)).shape == (2, 5)


class _PartialResidual(torch.nn.Module):
    """ReXNet's block shape: the shortcut is added to the first channels only, through a fixed slice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.expand = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.wide = torch.nn.Conv2d(16, 12, 1)
        self.head = torch.nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        y = self.wide(torch.relu(self.expand(s)))
        y = torch.cat([y[:, 0:8] + s, y[:, 8:]], dim=1)
        return self.head(y.mean((2, 3)))


def test_fixed_channel_slices_keep_their_groups_whole_and_the_rest_prunes(one_thread_module: None) -> None:
    """Pruning channels that pass a slice with constant bounds broke ReXNet's forward (and its trace looped
    for 15 minutes): such groups are kept whole with the reason, the others prune, the model runs."""
    from simprune.pruning.phases import prune

    torch.manual_seed(0)
    model = _PartialResidual().eval()
    pruned, report = prune(model, torch.randn(1, 3, 16, 16), "l1", pruning_ratio=0.5)
    reasons = {s["layer"]: s["reason"] for s in report["skipped_groups"]}
    assert "fixed channel slice" in reasons["wide"], reasons  # stem's channels are added into wide's: one group
    assert [layer["layer"] for layer in report["plan"]["layers"]] == ["expand"]
    assert pruned.expand.out_channels == 8 and (pruned.stem.out_channels, pruned.wide.out_channels) == (8, 12)
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_a_trace_that_does_not_close_is_abandoned_not_hung(monkeypatch: pytest.MonkeyPatch,
                                                           one_thread_module: None) -> None:
    """Each group's Torch-Pruning trace is bounded: past the budget the group is kept whole with the reason
    (ReXNet's partial adds made one trace collect 20,000+ dependencies), the rest prunes, and the budget is
    inactive outside group discovery."""
    import torch_pruning as tp

    from simprune.pruning import groups
    from simprune.pruning.phases import prune
    from simprune.zoo import build_model

    model = build_model("cifar_resnet20").eval()
    monkeypatch.setattr(groups, "TRACE_BUDGET", 12)  # a residual stream of ResNet-20 has more dependencies
    pruned, report = prune(model, torch.randn(1, 3, 16, 16), "l1", pruning_ratio=0.3)
    traced = [s for s in report["skipped_groups"] if "did not close within 12" in s["reason"]]
    assert traced and report["plan"]["layers"], report["skipped_groups"]
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 16, 16))
    assert len(list(dg.get_all_groups())) > 0  # Torch-Pruning itself is untouched outside discover_groups


class _FixedSplit(torch.nn.Module):
    """CSPNet's shape: the stem's channels split in fixed halves, one half transformed, both concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.part = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.mix = torch.nn.Conv2d(16, 12, 1)
        self.head = torch.nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.relu(self.stem(x)).split(8, dim=1)
        y = torch.relu(self.mix(torch.cat([torch.relu(self.part(a)), b], dim=1)))
        return self.head(y.mean((2, 3)))


def test_fixed_channel_splits_keep_their_groups_whole_and_the_rest_prunes(one_thread_module: None) -> None:
    """Torch-Pruning pruned across fixed-size splits (CSPNet, MixNet, Res2Net, SKNet) and the model no longer
    ran: a group through a channel split is kept whole with the reason; the others prune."""
    from simprune.pruning.phases import prune

    torch.manual_seed(0)
    pruned, report = prune(_FixedSplit().eval(), torch.randn(1, 3, 16, 16), "l1", pruning_ratio=0.5)
    reasons = {s["layer"]: s["reason"] for s in report["skipped_groups"]}
    assert "channel split" in reasons["stem"], reasons
    # Torch-Pruning's trace couples ``part``'s outputs with the stem's through the split and the concat: kept too
    assert [layer["layer"] for layer in report["plan"]["layers"]] == ["mix"]
    assert (pruned.stem.out_channels, pruned.part.out_channels, pruned.mix.out_channels) == (16, 8, 6)
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 5)
