"""CIFAR VGG-16 with BatchNorm, the variant of the network-slimming papers (Liu et al. 2017, Eric-mingjie/
network-slimming and rethinking-network-pruning ``models/vgg.py``, depth 16).

Layout: ``feature`` is an ``nn.Sequential`` of [conv3x3 (no bias) - BN - ReLU] blocks following
``64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512`` (M = 2x2 max pool; no pool after the last
stage), then average pooling to 1x1, flatten and ``classifier = Linear(512, num_classes)``. On 32x32 input
the last stage is 2x2, so the original ``AvgPool2d(2)`` and the ``AdaptiveAvgPool2d(1)`` used here are the
same operation; the adaptive pool also accepts other input sizes. Parameter names (``feature.0.weight``,
``feature.1.weight``, ..., ``classifier.weight``) match that repository's checkpoints. About 14.7M parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simprune.zoo.registry import register_arch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512
)


class CifarVGG(nn.Module):
    """VGG with BN for 32x32 inputs: conv feature stack, global average pool, one linear classifier."""

    def __init__(
        self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = int(v)
                layers += [nn.Conv2d(c, out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                c = out
        self.feature = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """The original init: conv N(0, sqrt(2 / (k*k*out))), BN weight 0.5 / bias 0, linear N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.feature(x)).flatten(1))


@register_arch(
    "cifar_vgg16_bn",
    input_size=(3, 32, 32),
    mean=CIFAR_MEAN,
    std=CIFAR_STD,
    num_classes=10,
    in_channels=3,
    family="cifar_vgg",
    description="CIFAR VGG-16 with BN, avg-pool + Linear(512) head (network-slimming variant)",
    tags=("cifar", "vgg"),
)
def cifar_vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """CIFAR VGG-16 with BatchNorm (network-slimming layout)."""
    return CifarVGG(VGG16_CFG, num_classes=num_classes, in_channels=in_channels)
