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
