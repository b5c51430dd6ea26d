"""CIFAR MobileNetV2 as in kuangliu/pytorch-cifar (``models/mobilenetv2.py``), the layout pruning papers use.

Changes from the ImageNet network, for 32x32 inputs: stem conv stride 1 (not 2), the second stage
(24 channels) stride 1 (not 2), final average pool over the 4x4 map (here ``adaptive_avg_pool2d(1)``, the
same operation on 32x32 input). Activations are ReLU (not ReLU6), as in that repository. Blocks with
stride 1 always add a shortcut: identity when widths match, otherwise a 1x1 conv + BN projection.
Parameter names (``conv1``, ``bn1``, ``layers.N.conv1..bn3``, ``layers.N.shortcut.0/1``, ``conv2``, ``bn2``,
``linear``) match that repository's checkpoints. About 2.30M parameters with 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simprune.zoo.cifar_vgg import CIFAR_MEAN, CIFAR_STD
from simprune.zoo.registry import register_arch

# (expansion, out_planes, num_blocks, stride)
MOBILENETV2_CIFAR_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 -> 1 for CIFAR
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1, linear); shortcut added when stride is 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 1:
            out = out + self.shortcut(x)
        return out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) adapted to 32x32 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks: list[nn.Module] = []
        in_planes = 32
        for expansion, out_planes, num_blocks, stride in MOBILENETV2_CIFAR_CFG:
            for s in [stride] + [1] * (num_blocks - 1):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_arch(
    "cifar_mobilenet_v2",
    input_size=(3, 32, 32),
    mean=CIFAR_MEAN,
    std=CIFAR_STD,
    num_classes=10,
    in_channels=3,
    family="cifar_mobilenet",
    description="CIFAR MobileNetV2 (kuangliu/pytorch-cifar layout: stride-1 stem and stage 2)",
    tags=("cifar", "mobilenet"),
)
def cifar_mobilenet_v2(num_classes: int = 10, in_channels: int = 3) -> CifarMobileNetV2:
    """CIFAR MobileNetV2 (kuangliu/pytorch-cifar layout)."""
    return CifarMobileNetV2(num_classes=num_classes, in_channels=in_channels)
