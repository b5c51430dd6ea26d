"""Tests of the model zoo: registration, builds, overrides, checkpoint inference/loading, plugins."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from simprune.errors import InputError
from simprune.zoo import (
    ArchInfo,
    build_for_state_dict,
    build_model,
    get_arch,
    infer_in_channels,
    infer_num_classes,
    list_archs,
    load_state_dict_lenient,
    register_arch,
)
from simprune.zoo import registry as zoo_registry
from simprune.zoo.cifar_resnet import PadShortcut
from simprune.zoo.torchvision_models import replace_first_conv

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CKPT_DIR = SHARED / "data" / "checkpoints"
CIFAR_TEST_ZIP = SHARED / "data" / "cifar10-jpeg" / "test.zip"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

CIFAR_RESNETS = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110"]
TORCHVISION = [
    "resnet18", "resnet34", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_large",
    "efficientnet_b0", "densenet121", "regnet_y_400mf",
]
AUDIO = ["dcase2021_task1a_baseline", "vggish"]
ALL = CIFAR_RESNETS + ["cifar_vgg16_bn", "cifar_mobilenet_v2"] + TORCHVISION + AUDIO

IMAGENET_MEAN = (0.485, 0.456, 0.406)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _test_input(info: ArchInfo, in_channels: int | None = None, small: bool = False) -> torch.Tensor:
    """Batch of one at the registered size; ``small``: half the spatial size where the arch accepts it.

    torchvision models always get 32x32 instead of 224x224 to stay fast (all of them accept it).
    """
    c, *hw = info.input_size
    if info.family == "torchvision":
        hw = [32, 32]
    elif small and info.name != "dcase2021_task1a_baseline":  # its dense layer fixes the pooled size
        hw = [d // 2 for d in hw]
    return torch.randn(1, in_channels or c, *hw)


def _build_shapes_only(name: str, **kwargs: int) -> nn.Module:
    """Build on the ``meta`` device (no memory, no init cost); RegNet computes widths eagerly: real build."""
    try:
        with torch.device("meta"):
            return build_model(name, **kwargs).eval()
    except NotImplementedError:
        return build_model(name, **kwargs).eval()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_ckpt(name: str) -> dict[str, torch.Tensor]:
    path = CKPT_DIR / name
    if not path.is_file():
        pytest.skip(f"shared checkpoint {path} not present")
    return torch.load(path, weights_only=True, map_location="cpu")["state_dict"]


def test_all_archs_registered_with_metadata() -> None:
    names = {a.name for a in list_archs()}
    assert set(ALL) <= names
    for name in CIFAR_RESNETS:
        info = get_arch(name)
        assert (info.input_size, info.mean, info.num_classes) == ((3, 32, 32), IMAGENET_MEAN, 10)
    for name in ("cifar_vgg16_bn", "cifar_mobilenet_v2"):
        assert get_arch(name).mean == CIFAR_MEAN and get_arch(name).std == (0.2470, 0.2435, 0.2616)
    for name in TORCHVISION:
        info = get_arch(name)
        assert (info.input_size, info.mean, info.num_classes, info.family) == (
            (3, 224, 224), IMAGENET_MEAN, 1000, "torchvision")
    assert get_arch("dcase2021_task1a_baseline").input_size == (1, 40, 500)
    assert get_arch("vggish").input_size == (1, 96, 64)
    for name in AUDIO:
        info = get_arch(name)
        assert (info.mean, info.std, info.in_channels, info.num_classes) == ((0.0,), (1.0,), 1, 10)
    d = get_arch("cifar_resnet56").to_dict()
    assert "builder" not in d and d["description"]


@pytest.mark.parametrize("name", ALL)
def test_forward_default_and_overrides(name: str) -> None:
    info = get_arch(name)
    model = _build_shapes_only(name)
    x = _test_input(info).to(next(model.parameters()).device)
    assert model(x).shape == (1, info.num_classes)
    other_c = 2 if info.in_channels != 2 else 3
    model = build_model(name, num_classes=7, in_channels=other_c).eval()
    with torch.no_grad():
        assert model(_test_input(info, other_c, small=True)).shape == (1, 7)


@pytest.mark.parametrize("name", ALL)
def test_infer_classes_and_channels(name: str) -> None:
    info = get_arch(name)
    other_c = 4 if info.in_channels != 4 else 3
    sd = _build_shapes_only(name, num_classes=13, in_channels=other_c).state_dict()  # shapes suffice
    assert infer_num_classes(name, sd) == 13
    assert infer_in_channels(name, sd) == other_c
    assert infer_num_classes(name, {}) is None and infer_in_channels(name, {}) is None


# one per distinct classifier / stem layout (vgg16_bn and the deeper ResNets add only build time)
@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg16_bn", "cifar_mobilenet_v2", "resnet18",
                                  "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "densenet121",
                                  "regnet_y_400mf", *AUDIO])
def test_build_for_state_dict_roundtrip(name: str) -> None:
    info = get_arch(name)
    other_c = 4 if info.in_channels != 4 else 3
    src = build_model(name, num_classes=13, in_channels=other_c).eval()
    sd = src.state_dict()
    # DataParallel prefix is tolerated; explicit values that agree with the checkpoint are accepted.
    model = build_for_state_dict(name, {f"module.{k}": v for k, v in sd.items()}, num_classes=13).eval()
    x = _test_input(info, other_c)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))


def test_param_counts() -> None:
    assert _n_params(build_model("cifar_resnet20")) == 269_722
    assert _n_params(build_model("cifar_resnet56")) == 853_018
    assert _n_params(build_model("cifar_resnet110")) == 1_727_962
    assert abs(_n_params(build_model("dcase2021_task1a_baseline")) - 46_000) <= 4_600
    assert _n_params(build_model("cifar_mobilenet_v2")) == 2_296_922
    assert _n_params(build_model("cifar_vgg16_bn")) == 14_724_042
    vggish = build_model("vggish")
    convs = [m.out_channels for m in vggish.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [64, 128, 256, 256, 512, 512]


def test_pad_shortcut_and_frozen_layers() -> None:
    sc = PadShortcut(8)
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4) and not list(sc.parameters())
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0

    model = build_model("cifar_resnet56")
    frozen = model.simprune_frozen_layers()
    assert frozen[0] == "conv1" and len(frozen) == 1 + 3 * 9
    assert all(isinstance(model.get_submodule(n), nn.Conv2d) for n in frozen)
    assert "layer2.0.conv2" in frozen and "layer2.0.conv1" not in frozen
    assert isinstance(model.layer2[0].shortcut, PadShortcut) and model.layer2[0].shortcut.pad == 8
    assert isinstance(model.layer3[0].shortcut, PadShortcut) and model.layer3[0].shortcut.pad == 16


def test_replace_first_conv_keeps_geometry() -> None:
    model = replace_first_conv(build_model("resnet18"), 1)
    conv = model.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        1, 64, (7, 7), (2, 2), (3, 3))
    assert conv.bias is None


@pytest.mark.parametrize(("arch", "ckpt"), [("cifar_resnet20", "resnet20-12fca82f.th"),
                                             ("cifar_resnet56", "resnet56-4bfd9763.th")])
def test_shared_checkpoints_load_strictly(arch: str, ckpt: str) -> None:
    sd = {k.removeprefix("module."): v for k, v in _load_ckpt(ckpt).items()}
    assert not any(k.endswith("num_batches_tracked") for k in sd)
    build_model(arch).load_state_dict(sd, strict=True)  # BatchNorm fills num_batches_tracked itself
    load_state_dict_lenient(build_model(arch), sd)
    model = build_for_state_dict(arch, _load_ckpt(ckpt))
    torch.testing.assert_close(model.linear.weight, sd["linear.weight"])


def _cifar_jpeg_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` test images spread over the 10 classes, normalised as in SOURCES.md (ImageNet mean/std)."""
    from PIL import Image

    if not CIFAR_TEST_ZIP.is_file():
        pytest.skip(f"shared CIFAR-10 JPEG set {CIFAR_TEST_ZIP} not present")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    with zipfile.ZipFile(CIFAR_TEST_ZIP) as zf:
        by_class: dict[str, list[str]] = {}
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if name.endswith(".jpg") and len(parts) >= 2 and parts[-2] in CIFAR_CLASSES:
                by_class.setdefault(parts[-2], []).append(name)
        picked = [(c, by_class[c][i]) for i in range(n // 10 + 1) for c in CIFAR_CLASSES][:n]
        images, labels = [], []
        for cls, name in picked:
            img = Image.open(io.BytesIO(zf.read(name))).convert("RGB")
            t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
            images.append((t - mean) / std)
            labels.append(CIFAR_CLASSES.index(cls))
    return torch.stack(images), torch.tensor(labels)


def test_pretrained_resnet20_predicts_cifar() -> None:
    sd = _load_ckpt("resnet20-12fca82f.th")
    x, y = _cifar_jpeg_batch(64)
    assert x.shape == (64, 3, 32, 32)
    model = build_for_state_dict("cifar_resnet20", sd).eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.6, f"ResNet-20 accuracy on 64 CIFAR JPEGs {acc:.2%} (expected ~81%)"


def test_mismatched_checkpoint_raises_input_error() -> None:
    sd = build_model("cifar_resnet20").state_dict()
    with pytest.raises(InputError, match=r"cifar_resnet56.*missing key\(s\): layer1\.3\."):
        build_for_state_dict("cifar_resnet56", sd)
    with pytest.raises(InputError, match=r"unexpected key\(s\): layer1\.3\."):
        build_for_state_dict("cifar_resnet20", build_model("cifar_resnet56").state_dict())
    bad = dict(sd)
    bad["layer1.0.conv1.weight"] = torch.zeros(8, 16, 3, 3)
    with pytest.raises(InputError, match=r"mismatch.*layer1\.0\.conv1\.weight: checkpoint \(8, 16, 3, 3\)"):
        build_for_state_dict("cifar_resnet20", bad)
    with pytest.raises(InputError, match="num_classes=100 was requested.*num_classes=10"):
        build_for_state_dict("cifar_resnet20", sd, num_classes=100)
    with pytest.raises(InputError, match="in_channels=1 was requested.*in_channels=3"):
        build_for_state_dict("cifar_resnet20", sd, in_channels=1)
    with pytest.raises(InputError, match="inner 'state_dict'"):
        build_for_state_dict("cifar_resnet20", {"state_dict": sd, "best_prec1": 91.7})
    with pytest.raises(InputError, match="unknown architecture"):
        build_for_state_dict("no_such_net", sd)
    model = build_model("cifar_resnet20")
    with pytest.raises(InputError, match="missing key"):
        load_state_dict_lenient(model, {k: v for k, v in sd.items() if "bn1" not in k})
    # only num_batches_tracked may be absent
    without_nbt = {k: v for k, v in sd.items() if "num_batches" not in k}
    load_state_dict_lenient(build_model("cifar_resnet20"), without_nbt)


def test_plugin_entry_point_registers_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "test_plugin_tiny_net"

    def register() -> None:
        @register_arch(name, input_size=(3, 8, 8), mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=2,
                       family="plugin")
        def tiny(num_classes: int = 2, in_channels: int = 3) -> nn.Module:
            """Tiny plugin net."""
            return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))

    class FakeEntryPoint:
        def load(self) -> object:
            return register

    seen_groups: list[str] = []

    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        seen_groups.append(group)
        return [FakeEntryPoint()]

    monkeypatch.setattr(zoo_registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(zoo_registry, "_plugins_loaded", False)
    try:
        assert name in {a.name for a in list_archs()}
        assert seen_groups == [zoo_registry.ENTRY_POINT_GROUP]
        assert get_arch(name).family == "plugin"
        assert build_model(name, num_classes=3)(torch.randn(1, 3, 8, 8)).shape == (1, 3)
    finally:
        zoo_registry._ARCHS.pop(name, None)
