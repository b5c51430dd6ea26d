"""Audio classifiers on log-mel inputs: the DCASE 2021 Task 1A baseline CNN and VGGish.

Inputs are single-channel log-mel feature maps laid out ``(N, 1, mel_bands, frames)``; they are already
features, so the normalisation registered is the identity (mean 0, std 1).
"""

from __future__ import annotations

import torch
from torch import nn

from simprune.zoo.registry import register_arch

AUDIO_MEAN = (0.0,)
AUDIO_STD = (1.0,)


def _conv_bn_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DCASE2021Task1ABaseline(nn.Module):
    """DCASE 2021 Task 1A baseline (the Keras ``model_size_limit`` CNN), ported to PyTorch.

    Input ``(N, 1, 40, 500)``: 40 log-mel bands x 500 frames (10 s). Layers:
    conv 7x7 1->16 -BN-ReLU, conv 7x7 16->16 -BN-ReLU, maxpool (5, 5), dropout 0.3,
    conv 7x7 16->32 -BN-ReLU, maxpool (4, 100), dropout 0.3, flatten (32 x 2 x 1 = 64),
    dense 64->100 ReLU, dropout 0.3, dense 100->num_classes (logits; the Keras softmax is left to the loss).
    All convolutions use "same" padding (3) and a bias, like the Keras ``Conv2D`` defaults of the baseline;
    the feature map goes 40x500 -> 8x100 -> 2x1. Trainable parameters: 46,118 (Keras reports 46,246 because
    it also counts the BatchNorm moving statistics). The dense layer expects exactly 64 inputs, i.e. a 2x1
    pooled map, so use the registered input size (any H in [40, 59] and W in [500, 999] also works).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 16, 7),
            *_conv_bn_relu(16, 16, 7),
            nn.MaxPool2d(kernel_size=(5, 5)),
            nn.Dropout(dropout),
            *_conv_bn_relu(16, 32, 7),
            nn.MaxPool2d(kernel_size=(4, 100)),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 2 * 1, 100),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGish(nn.Module):
    """VGGish (Hershey et al. 2017) convolutional trunk with a compact classification head.

    Input ``(N, 1, 96, 64)``: 96 frames x 64 mel bands (0.96 s patches), as in the original. The trunk is the
    original's: conv3x3 64 - pool - conv 128 - pool - conv 256, 256 - pool - conv 512, 512 - pool (convs with
    bias and ReLU, no BN; 2x2 max pools), i.e. ``features.{0,3,6,8,11,13}`` are the convolutions. The original
    embedding head (FC 4096-4096-128 on the flattened 512x6x4 map, ~72M parameters) is replaced by global
    average pooling + ``classifier = Linear(512, num_classes)``, so the model is ~4.5M parameters and suits
    classification fine-tuning and pruning.
    """

    CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_arch(
    "dcase2021_task1a_baseline",
    input_size=(1, 40, 500),
    mean=AUDIO_MEAN,
    std=AUDIO_STD,
    num_classes=10,
    in_channels=1,
    family="audio",
    description="DCASE 2021 Task 1A baseline CNN (16/16/32 conv filters, ~46k params) on 40x500 log-mel",
    tags=("audio", "dcase"),
)
def dcase2021_task1a_baseline(num_classes: int = 10, in_channels: int = 1) -> DCASE2021Task1ABaseline:
    """DCASE 2021 Task 1A baseline CNN."""
    return DCASE2021Task1ABaseline(num_classes=num_classes, in_channels=in_channels)


@register_arch(
    "vggish",
    input_size=(1, 96, 64),
    mean=AUDIO_MEAN,
    std=AUDIO_STD,
    num_classes=10,
    in_channels=1,
    family="audio",
    description="VGGish conv trunk on 96x64 log-mel patches, global-avg-pool + Linear(512) head",
    tags=("audio", "vggish"),
)
def vggish(num_classes: int = 10, in_channels: int = 1) -> VGGish:
    """VGGish with a global-average-pool classification head."""
    return VGGish(num_classes=num_classes, in_channels=in_channels)
