"""The ONNX test networks the bring-your-own-model issue names: torchvision resnet18, mobilenet_v3_small,
efficientnet_b0, regnet_x_400mf, densenet121 and a hand-written CNN (concat, depthwise convs, squeeze-excite),
each with non-trivial BatchNorm statistics, exported at ``HW``x``HW`` with a dynamic batch."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

HW = 32


class HandCNN(nn.Module):
    """Concat of two branches, depthwise separable convs and a squeeze-excite block."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 20, 1, bias=False), nn.BatchNorm2d(20), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.se_reduce, self.se_expand = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.pw = nn.Sequential(nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.dw(torch.cat([self.a(x), self.b(x)], dim=1))
        s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = self.pw(x * s)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


NETS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(num_classes=10),
    "densenet121": lambda: torchvision.models.densenet121(num_classes=10),
    "hand_cnn": HandCNN,
}
NUM_CLASSES = {name: 7 if name == "hand_cnn" else 10 for name in NETS}


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that pruning and fidelity checks see realistic activations."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def export_onnx(model: nn.Module, path: Path) -> Path:
    """``model`` as opset-17 ONNX at ``HW``x``HW`` with a dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, HW, HW),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return path


def export_all(root: Path) -> dict[str, Path]:
    """Every network of ``NETS`` exported under ``root`` (seeded)."""
    torch.manual_seed(0)
    return {name: export_onnx(randomize_bn(build()), root / f"{name}.onnx") for name, build in NETS.items()}
