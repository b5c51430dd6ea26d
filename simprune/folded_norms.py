"""BatchNorm computed inside the convolution before it, for the gradient stages (block and output reconstruction).

In eval mode a BatchNorm after a convolution is a per-channel affine map, so ``bn(conv(x))`` equals one
convolution with weight ``W * s`` and bias ``beta - mu * s`` (``s = gamma / sqrt(var + eps)``). Inside
:func:`folded_batchnorm` each such pair computes that folded weight and bias from its live parameters at every
call (a few thousand multiplications) and runs one convolution; the BatchNorm passes its input through. The
parameters are not replaced: gradients still reach the convolution's weight and the BatchNorm's weight and bias,
by the chain rule through the folded weights, so an optimiser built on them takes the same steps (to rounding).
What disappears is the BatchNorm's pass over the activations, forward and backward: on a 2-core CPU, ResNet-56's
output reconstruction 10-15% faster (BENCHMARKS.md, session 19).

Pairs are found by running the model once on an example (a BatchNorm whose input is the very tensor a convolution
returned) and kept only if the folded model then gives the same outputs as before, so a convolution whose output
also feeds something else is caught (the outputs differ) and nothing is folded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from simprune.export import max_abs_diff
from simprune.pruning.prefix_cache import output_tensors

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
MATCH_RTOL = 1e-3
"""Largest relative difference (to the outputs' largest magnitude) the folded model may show on the example."""


def _foldable(bn: nn.Module) -> bool:
    return (type(bn) in _NORMS and not bn.training and bn.running_mean is not None  # type: ignore[union-attr]
            and bn.running_var is not None)  # type: ignore[union-attr]


def conv_norm_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """``(conv, bn)`` pairs of ``model`` where an eval-mode BatchNorm takes exactly the tensor a plain
    convolution returned, each module called once in a forward pass on ``example``."""
    made: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    calls: dict[nn.Module, int] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def conv_hook(m: nn.Module, _a: Any, out: Any) -> None:
        calls[m] = calls.get(m, 0) + 1
        if isinstance(out, torch.Tensor):
            made[id(out)] = (m, out)  # the tensor is held, so its id is not reused during the pass

    def norm_hook(m: nn.Module, args: tuple[Any, ...]) -> None:
        calls[m] = calls.get(m, 0) + 1
        got = made.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        if got is not None and got[1] is args[0]:
            pairs.append((got[0], m))

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if type(m) in _CONVS]
    handles += [m.register_forward_pre_hook(norm_hook) for m in model.modules() if _foldable(m)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    convs = [c for c, _ in pairs]
    return [(c, b) for c, b in pairs if calls.get(c) == 1 and calls.get(b) == 1 and convs.count(c) == 1]


def _folded_forward(conv: Any, bn: Any) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = bn.weight * scale
        shift = -bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        weight = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        return conv._conv_forward(x, weight, shift)
    return forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _unpatch(pairs: list[tuple[nn.Module, nn.Module]]) -> None:
    for conv, bn in pairs:
        for m in (conv, bn):
            m.__dict__.pop("forward", None)


def _patch_if_same(model: nn.Module, example: torch.Tensor, pairs: list[tuple[nn.Module, nn.Module]]) -> bool:
    """Fold ``pairs`` and keep them folded if ``model``'s outputs on ``example`` stay the same; else restore."""
    try:
        with torch.no_grad():
            want = model(example)
            for conv, bn in pairs:
                conv.forward = _folded_forward(conv, bn)  # type: ignore[method-assign]
                bn.forward = _identity  # type: ignore[method-assign]
            got = model(example)
    except BaseException:
        _unpatch(pairs)
        raise
    scale = max((float(t.abs().max()) for t in output_tensors(want) if t.numel()), default=0.0) or 1.0
    same = max_abs_diff(want, got) <= MATCH_RTOL * scale
    if not same:
        _unpatch(pairs)
    return same


@contextlib.contextmanager
def folded_batchnorm(model: nn.Module, example: torch.Tensor, enabled: bool = True) -> Iterator[int]:
    """Inside the block, every convolution-BatchNorm pair of ``model`` (eval mode) runs as one convolution with
    the BatchNorm folded in, computed from the live parameters at each call (see the module docstring). Yields
    the number of pairs folded: 0 when disabled, when there are none, or when the folded model's outputs on
    ``example`` differ from the model's own (the model then runs as it is). The modules are restored on exit."""
    pairs = conv_norm_pairs(model, example) if enabled else []
    if pairs and not _patch_if_same(model, example, pairs):
        pairs = []
    try:
        yield len(pairs)
    finally:
        _unpatch(pairs)
