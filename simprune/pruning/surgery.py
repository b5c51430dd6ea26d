"""Channel removal through Torch-Pruning, and replay of a recorded plan on a fresh model."""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from simprune.errors import InputError
from simprune.pruning.blocks import drop_blocks
from simprune.pruning.groups import build_graph


def _out_fn(module: nn.Module):
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_conv_out_channels


def remove_channels(dg: tp.DependencyGraph, module: nn.Module, keep: list[int]) -> None:
    """Remove every output channel of ``module`` not in ``keep``, with all coupled layers."""
    n = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    keep_set = set(int(k) for k in keep)
    removed = [i for i in range(n) if i not in keep_set]
    if not removed:
        return
    group = dg.get_pruning_group(module, _out_fn(module), removed)
    group.prune()


def apply_plan(model: nn.Module, example: torch.Tensor, layers: list[dict[str, Any]],
               dropped_blocks: list[str] | None = None) -> nn.Module:
    """Prune ``model`` in place exactly as a plan records: first drop the residual blocks ``dropped_blocks``
    (``plan["dropped_blocks"]``), then cut the channels of ``layers`` (``plan["layers"]``) in the recorded order."""
    if dropped_blocks:
        drop_blocks(model, dropped_blocks)
    modules = dict(model.named_modules())
    dg = build_graph(model, example)
    for entry in layers:
        name = entry["layer"]
        if name not in modules:
            raise InputError(f"plan names layer '{name}', which this model does not have")
        mod = modules[name]
        n = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        if n != entry["channels_before"]:
            raise InputError(f"plan expects {entry['channels_before']} channels in '{name}', model has {n}")
        remove_channels(dg, mod, entry["keep"])
    return model
