"""MACs ("FLOPs" in the pruning literature) and parameter counts, per layer and total.

Counts multiply-accumulates of convolutions and linear layers, the convention of the papers simprune
compares with (ResNet-56 on CIFAR-10: 125.5M). Normalisation, activations and pooling are not counted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        per_out = (module.in_channels // module.groups) * kernel
        return int(out[0].numel() * per_out)  # per sample: out elements x MACs each
    if isinstance(module, nn.Linear):
        return int(out[0].numel() * module.in_features)
    return 0


@torch.no_grad()
def count_model(model: nn.Module, example_input: torch.Tensor) -> dict[str, Any]:
    """Per-sample MACs and parameters of ``model`` for an input shaped like ``example_input``.

    Returns ``{"flops": int, "params": int, "per_layer": [{name, type, in_channels, out_channels, flops,
    params}, ...]}`` with layers in execution order.
    """
    rows: list[dict[str, Any]] = []
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if not isinstance(out, torch.Tensor):
                return
            rows.append(
                {
                    "name": name,
                    "type": type(mod).__name__,
                    "in_channels": getattr(mod, "in_channels", getattr(mod, "in_features", None)),
                    "out_channels": getattr(mod, "out_channels", getattr(mod, "out_features", None)),
                    "flops": _layer_macs(mod, out),
                    "params": sum(p.numel() for p in mod.parameters(recurse=False)),
                }
            )

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(example_input[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {
        "flops": sum(r["flops"] for r in rows),
        "params": sum(p.numel() for p in model.parameters()),
        "per_layer": rows,
    }
