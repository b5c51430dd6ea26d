"""The classic CIFAR ResNet (He et al. 2016, sec. 4.2), layout identical to akamaster/pytorch_resnet_cifar10.

Parameter names match that repository's checkpoints once the ``module.`` prefix is stripped (``conv1``,
``bn1``, ``layer1.0.conv1`` ... ``linear``), so its pretrained ResNet-20/32/44/56/110 files load strictly.
Depth ``6n + 2``: a 3x3 stem with 16 channels, three stages of ``n`` BasicBlocks with 16/32/64 channels
(the first block of stages 2 and 3 has stride 2), global average pooling and a linear classifier.
Where the shape changes the shortcut is the parameter-free "option A" (:class:`PadShortcut`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from simprune.zoo.registry import register_arch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _weights_init(m: nn.Module) -> None:
    """Kaiming-normal init of conv and linear weights, as in the original (biases keep PyTorch's init)."""
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(m.weight)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 (``x[:, :, ::2, ::2]``) and zero-pad ``pad`` channels on each side.

    It has no parameters, so the residual stream's channel layout is fixed: channel ``c`` of the input
    becomes channel ``c + pad`` of the output.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """CIFAR ResNet with option-A shortcuts; ``num_blocks`` blocks per stage (3 stages, 16/32/64 channels)."""

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        self.apply(_weights_init)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)

    def simprune_frozen_layers(self) -> list[str]:
        """Modules whose OUTPUT channels the pruning engine must keep: the stem ``conv1`` and every ``conv2``.

        These convolutions write into the residual stream. The option-A shortcut (:class:`PadShortcut`)
        adds a fixed, parameter-free channel padding (``c -> c + planes // 4``) to that stream, so removing
        a stream channel would misalign the padded identity against the block output; no dependency graph
        can express this mapping. Only each block's inner channels (``conv1`` out -> ``conv2`` in) are free.
        """
        names = ["conv1"]
        for stage in ("layer1", "layer2", "layer3"):
            for i in range(len(getattr(self, stage))):
                names.append(f"{stage}.{i}.conv2")
        return names


def _make(depth: int) -> Callable[..., CifarResNet]:
    """Register and return the builder for ``cifar_resnet{depth}`` (depth = 6n + 2)."""
    n = (depth - 2) // 6

    @register_arch(
        f"cifar_resnet{depth}",
        input_size=(3, 32, 32),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=10,
        in_channels=3,
        family="cifar_resnet",
        description=f"CIFAR ResNet-{depth} (He et al. 2016, option-A shortcut, akamaster layout)",
        tags=("cifar", "resnet"),
    )
    def builder(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
        return CifarResNet((n, n, n), num_classes=num_classes, in_channels=in_channels)

    builder.__name__ = f"cifar_resnet{depth}"
    builder.__doc__ = f"CIFAR ResNet-{depth} with option-A shortcuts."
    return builder


cifar_resnet20 = _make(20)
cifar_resnet32 = _make(32)
cifar_resnet44 = _make(44)
cifar_resnet56 = _make(56)
cifar_resnet110 = _make(110)
