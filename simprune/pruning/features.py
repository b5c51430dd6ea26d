"""Calibration inputs and feature maps for the pruning phases, sequential pruning and least squares.

* :func:`iter_inputs` / :func:`first_inputs`: input batches from a tensor, a DataLoader or an iterable.
* :func:`collect_features`: the feature maps each group's consumer receives (capped per group by
  :data:`FEATURE_BUDGET`).
* :func:`to_channel_group`: a discovered :class:`~simprune.pruning.groups.GroupSpec` with its features, as the
  :class:`~simprune.methods.base.ChannelGroup` a criterion scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from simprune.errors import JobCancelled
from simprune.methods.base import ChannelGroup
from simprune.pruning.groups import GroupSpec

FEATURE_BUDGET = 8_000_000  # floats kept per group for data-driven criteria and folding


def iter_inputs(calib: Any, device: torch.device | None = None) -> Iterator[torch.Tensor]:
    """Input batches from a tensor, a DataLoader / iterable of tensors or of (x, y) pairs. Image batches
    (4-D floating point) come in channels-last memory format: a 2-D convolution given a channels-last input
    computes channels-last (oneDNN / cuDNN), which on this project's CPU runs a ResNet-56 forward pass about 1.2x
    faster (``bench/recon_step_time.py``); every calibration pass of the pruning phases reads its inputs here."""
    if calib is None:
        return
    if isinstance(calib, torch.Tensor):
        batches: Iterable[Any] = calib.split(64)
    else:
        batches = calib
    for b in batches:
        x = b[0] if isinstance(b, list | tuple) else b
        x = x.to(device) if device is not None else x
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point():
            x = x.contiguous(memory_format=torch.channels_last)
        yield x


def first_inputs(calib: Any, n: int, device: torch.device | None = None) -> torch.Tensor:
    """The first ``n`` calibration inputs (fewer if there are fewer) as one tensor."""
    xs, have = [], 0
    for x in iter_inputs(calib, device):
        xs.append(x[: n - have])
        have += xs[-1].shape[0]
        if have >= n:
            break
    return torch.cat(xs)


class _Stop(Exception):
    """Raised by a feature hook once every group's features of the batch are saved."""


def _feature_hooks(model: nn.Module, specs: list[GroupSpec], store: dict[str, list[torch.Tensor]],
                   caps: dict[str, int], calls: dict[str, int], stop_early: list[bool]) -> list[Any]:
    modules = dict(model.named_modules())
    hooks = []
    for spec in specs:
        kind, _, target = spec.feature_point.partition(":")
        mod = modules[target] if target else spec.root

        def save(t: torch.Tensor, name: str = spec.name) -> None:
            have = sum(x.shape[0] for x in store[name])
            cap = caps.setdefault(name, max(8, FEATURE_BUDGET // max(1, t[0].numel())))
            if have < cap:
                store[name].append(t[: cap - have].detach().float().cpu())
            calls[name] = calls.get(name, 0) + 1
            if stop_early[0] and len(calls) == len(store):
                raise _Stop

        if kind == "consumer":
            hooks.append(mod.register_forward_pre_hook(lambda m, inp, s=save: s(inp[0])))
        else:
            hooks.append(mod.register_forward_hook(lambda m, inp, out, s=save: s(out)))
    return hooks


@torch.no_grad()
def collect_features(
    model: nn.Module,
    specs: list[GroupSpec],
    calib: Any,
    device: torch.device | None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Feature maps each group's consumer receives on the calibration data (capped per group).

    When the first batch shows each feature point reached once per pass, the later batches' passes stop as
    soon as every group's features are saved (the rest of the model is not needed)."""
    store: dict[str, list[torch.Tensor]] = {s.name: [] for s in specs}
    caps: dict[str, int] = {}
    calls: dict[str, int] = {}
    stop_early = [False]
    hooks = _feature_hooks(model, specs, store, caps, calls, stop_early)
    was_training = model.training
    model.eval()
    try:
        for x in iter_inputs(calib, device):
            if should_cancel and should_cancel():
                raise JobCancelled("cancelled while collecting feature maps")
            calls.clear()
            try:
                model(x)
            except _Stop:
                pass
            if not stop_early[0]:
                stop_early[0] = len(calls) == len(store) and all(c == 1 for c in calls.values())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {k: torch.cat(v) for k, v in store.items() if v}


def to_channel_group(spec: GroupSpec, features: dict[str, torch.Tensor]) -> ChannelGroup:
    """The criterion's view of a discovered group, with its calibration features when collected."""
    return ChannelGroup(
        name=spec.name,
        conv=spec.root,
        bn=spec.bn,
        n_channels=spec.n_channels,
        consumers=list(spec.consumers),
        coupled=list(spec.depthwise),
        features=features.get(spec.name),
        extra={"consumer_bns": dict(spec.consumer_bns), "feature_point": spec.feature_point},
    )
