"""torchvision ImageNet classifiers, built with ``weights=None`` (random init; nothing is ever downloaded).

``num_classes`` is passed to torchvision; ``in_channels`` replaces the stem convolution (the first
``nn.Conv2d`` in module order) by one with the same output channels, kernel, stride, padding, dilation,
groups and bias, so weights from a 1- or 4-channel checkpoint can be loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models as tvm

from simprune.zoo.registry import register_arch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TORCHVISION_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "vgg16_bn": tvm.vgg16_bn,
    "mobilenet_v2": tvm.mobilenet_v2,
    "mobilenet_v3_large": tvm.mobilenet_v3_large,
    "efficientnet_b0": tvm.efficientnet_b0,
    "densenet121": tvm.densenet121,
    "regnet_y_400mf": tvm.regnet_y_400mf,
}


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first ``nn.Conv2d`` of ``model`` for one taking ``in_channels`` inputs (same geometry)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            if module.groups != 1:
                raise ValueError(f"first conv '{name}' is grouped; cannot change its input channels")
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                kernel_size=module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return model
    raise ValueError("model has no nn.Conv2d to adapt to a different number of input channels")


def _make(name: str, fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``name`` as a builder around the torchvision constructor ``fn``."""

    @register_arch(
        name,
        input_size=(3, 224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=1000,
        in_channels=3,
        family="torchvision",
        description=f"torchvision {name} (ImageNet layout, random init)",
        tags=("imagenet", "torchvision"),
    )
    def builder(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        model = fn(weights=None, num_classes=num_classes)
        if in_channels != 3:
            replace_first_conv(model, in_channels)
        return model

    builder.__name__ = name
    builder.__doc__ = f"torchvision {name}, ``weights=None``."
    return builder


BUILDERS: dict[str, Callable[..., nn.Module]] = {n: _make(n, f) for n, f in _TORCHVISION_ARCHS.items()}
