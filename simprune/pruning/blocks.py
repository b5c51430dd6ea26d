"""Depth pruning: residual blocks whose branch can be dropped entirely, and the drop itself.

A residual block computes ``act(shortcut(x) + branch(x))``. Dropping it keeps ``act(shortcut(x))``: the
shortcut path (identity, a projection / downsample, or the option-A channel pad of CIFAR ResNets) and the
post-add activation when the block has one. :func:`removable_blocks` lists the blocks of the families this
module knows (a block is listed only where the drop is valid, e.g. MobileNet inverted residuals with their
shortcut on); :func:`drop_blocks` replaces them in place by :class:`DroppedBlock`, which keeps the
shortcut's module under its original attribute name, so parameter names (and ``weights.safetensors``) are
those of the dense model minus the branch. ``plan.json`` records the dropped names (``"dropped_blocks"``);
replaying a plan drops them before the channel cuts.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from simprune.errors import InputError
from simprune.pruning.groups import GroupSpec, discover_groups


@dataclass(frozen=True)
class ResidualBlock:
    """A removable residual block: its module path, its family, and the prunable groups inside its branch.

    ``groups`` are the root module paths of the branch's inner channel groups (``GroupSpec.name`` as
    :func:`~simprune.pruning.groups.discover_groups` names them): convs and linears whose output channels stay
    inside the branch, less the grouped/depthwise convs and squeeze-excitation expansions coupled to an earlier
    one. Dropping the block saves their cost along with the rest of the branch.
    """

    name: str
    family: str
    groups: tuple[str, ...]


class DroppedBlock(nn.Module):
    """What a residual block computes without its branch: its shortcut path, then its post-add activation.

    The shortcut module (when not the identity) is registered under the block's own attribute name
    (``downsample``, ``proj``, ``shortcut``), so its parameter names are unchanged.
    """

    def __init__(self, shortcut: nn.Module | None = None, shortcut_name: str = "shortcut",
                 act: nn.Module | None = None) -> None:
        super().__init__()
        self.shortcut_name = shortcut_name
        self.has_shortcut = shortcut is not None
        self.has_act = act is not None
        if shortcut is not None:
            self.add_module(shortcut_name, shortcut)
        if act is not None:
            self.act = act

    def forward(self, x: Tensor) -> Tensor:
        if self.has_shortcut:
            x = self._modules[self.shortcut_name](x)
        if self.has_act:
            x = self.act(x)
        return x

    def extra_repr(self) -> str:
        return f"shortcut={self.shortcut_name if self.has_shortcut else 'identity'}"


def _fresh_act(act: nn.Module | None) -> nn.Module | None:
    """A copy of a post-add activation that never writes into its input (the shortcut may be the identity)."""
    if act is None or isinstance(act, nn.Identity):
        return None
    act = copy.deepcopy(act)
    if hasattr(act, "inplace"):
        act.inplace = False
    return act


@dataclass(frozen=True)
class _Family:
    """How to recognise a block family and what its drop keeps."""

    name: str
    match: Callable[[nn.Module], bool]
    shortcut: str | None  # attribute holding the shortcut module (None: identity)
    act: Callable[[nn.Module], nn.Module | None]
    branch: Callable[[nn.Module], list[str]]  # attribute paths of the branch's submodules
    out_conv: Callable[[nn.Module], str]  # path (relative to the block) of the conv writing into the add


def _last_conv(m: nn.Module, under: str) -> str:
    convs = [n for n, c in m.named_modules() if isinstance(c, nn.Conv2d) and (n == under or n.startswith(under + "."))]
    return convs[-1]


def _isa(module_path: str, name: str) -> Callable[[nn.Module], bool]:
    """``isinstance(m, module_path.name)``, importing nothing: a model of a library has loaded that library."""

    def match(m: nn.Module) -> bool:
        cls = getattr(sys.modules.get(module_path), name, None)
        return cls is not None and isinstance(m, cls)

    return match


def _all_but(*skip: str) -> Callable[[nn.Module], list[str]]:
    return lambda m: [n for n, _ in m.named_children() if n not in skip]


def _families() -> list[_Family]:
    relu = lambda m: nn.ReLU()  # noqa: E731 (F.relu in forward)
    tv_res, timm_res = "torchvision.models.resnet", "timm.models.resnet"
    timm_eff = "timm.models._efficientnet_blocks"
    cifar_ir = _isa("simprune.zoo.cifar_mobilenet", "InvertedResidual")
    with_res = lambda pred: (lambda m: pred(m) and bool(getattr(m, "use_res_connect", False)))  # noqa: E731
    with_skip = lambda pred: (lambda m: pred(m) and bool(getattr(m, "has_skip", False)))  # noqa: E731
    return [
        _Family("cifar_basic", _isa("simprune.zoo.cifar_resnet", "BasicBlock"), "shortcut", relu,
                _all_but("shortcut"), lambda m: "conv2"),
        _Family("cifar_inverted_residual", lambda m: cifar_ir(m) and m.stride == 1, "shortcut", lambda m: None,
                _all_but("shortcut"), lambda m: "conv3"),
        _Family("tv_basic", _isa(tv_res, "BasicBlock"), "downsample", lambda m: m.relu,
                _all_but("downsample", "relu"), lambda m: "conv2"),
        _Family("tv_bottleneck", _isa(tv_res, "Bottleneck"), "downsample", lambda m: m.relu,
                _all_but("downsample", "relu"), lambda m: "conv3"),
        _Family("tv_inverted_residual", with_res(_isa("torchvision.models.mobilenetv2", "InvertedResidual")), None,
                lambda m: None, lambda m: ["conv"], lambda m: _last_conv(m, "conv")),
        _Family("tv_inverted_residual_v3", with_res(_isa("torchvision.models.mobilenetv3", "InvertedResidual")),
                None, lambda m: None, lambda m: ["block"], lambda m: _last_conv(m, "block")),
        _Family("tv_regnet", _isa("torchvision.models.regnet", "ResBottleneckBlock"), "proj",
                lambda m: m.activation, lambda m: ["f"], lambda m: _last_conv(m, "f")),
        _Family("tv_mbconv", with_res(_isa("torchvision.models.efficientnet", "MBConv")), None, lambda m: None,
                lambda m: ["block"], lambda m: _last_conv(m, "block")),
        _Family("tv_fused_mbconv", with_res(_isa("torchvision.models.efficientnet", "FusedMBConv")), None,
                lambda m: None, lambda m: ["block"], lambda m: _last_conv(m, "block")),
        _Family("timm_basic", _isa(timm_res, "BasicBlock"), "downsample", lambda m: m.act2,
                _all_but("downsample", "act2"), lambda m: "conv2"),
        _Family("timm_bottleneck", _isa(timm_res, "Bottleneck"), "downsample", lambda m: m.act3,
                _all_but("downsample", "act3"), lambda m: "conv3"),
        _Family("timm_inverted_residual", with_skip(_isa(timm_eff, "InvertedResidual")), None, lambda m: None,
                _all_but(), lambda m: "conv_pwl"),
        _Family("timm_ds_conv", with_skip(_isa(timm_eff, "DepthwiseSeparableConv")), None, lambda m: None,
                _all_but(), lambda m: "conv_pw"),
        _Family("timm_edge_residual", with_skip(_isa(timm_eff, "EdgeResidual")), None, lambda m: None,
                _all_but(), lambda m: "conv_pwl"),
    ]


_FAMILIES: list[_Family] = _families()


def _known_families() -> list[_Family]:
    return _FAMILIES


def _family_of(m: nn.Module) -> _Family | None:
    return next((f for f in _known_families() if f.match(m)), None)


def _is_depthwise(mod: nn.Module | None) -> bool:
    return isinstance(mod, nn.Conv2d | nn.Conv1d) and mod.groups > 1 and mod.groups == mod.in_channels


def _inner_groups(block: nn.Module, fam: _Family, prefix: str) -> tuple[str, ...]:
    """The group roots Torch-Pruning finds inside the branch (checked against discovery in the tests).

    A conv feeding a depthwise conv is coupled to it and the depthwise conv is the root (when nothing in
    the branch feeds the depthwise conv, its channels are the block input's: no inner group), except in
    timm's blocks, where the squeeze-excitation expansion (``conv_expand``) gating those channels is; a
    squeeze-excitation expansion (``fc2``, ``conv_expand``) is never a root of its own.
    """
    out_conv = fam.out_conv(block)
    layers = [(n, mod) for sub in fam.branch(block) for n, mod in getattr(block, sub).named_modules(prefix=sub)
              if isinstance(mod, nn.Conv2d | nn.Conv1d | nn.Linear)]
    names = []
    for i, (n, mod) in enumerate(layers):
        nxt = layers[i + 1][1] if i + 1 < len(layers) else None
        if n == out_conv or n.rsplit(".", 1)[-1] in ("fc2", "conv_expand"):
            continue
        if _is_depthwise(nxt) and getattr(mod, "out_channels", None) == nxt.in_channels:
            continue  # coupled to the depthwise conv after it, which is the root
        if _is_depthwise(mod) and (i == 0 or getattr(layers[i - 1][1], "out_channels", None) != mod.in_channels):
            continue  # fed by the block input: its channels are the residual stream's
        if _is_depthwise(mod):  # timm's squeeze-excitation expansion is the root of the channels it gates
            n = next((e for e, c in layers[i + 1:] if e.endswith("conv_expand")
                      and getattr(c, "out_channels", None) == mod.out_channels), n)
        names.append(f"{prefix}.{n}" if prefix else n)
    return tuple(names)


def in_branch(block: str, family: str, module: str) -> bool:
    """Whether module path ``module`` lies in the residual branch of block ``block`` (not in its shortcut)."""
    fam = next((f for f in _known_families() if f.name == family), None)
    if not module.startswith(block + "."):
        return False
    short = f"{block}.{fam.shortcut}" if fam is not None and fam.shortcut else None
    return short is None or not (module == short or module.startswith(short + "."))


def branch_groups(block: ResidualBlock, specs: list[GroupSpec]) -> tuple[str, ...]:
    """The discovered groups whose every layer lies in the block's branch (what dropping it removes)."""
    return tuple(s.name for s in specs
                 if s.effects and all(in_branch(block.name, block.family, m) for m, _, _ in s.effects))


def removable_blocks(model: nn.Module, example: Tensor | None = None) -> list[ResidualBlock]:
    """The residual blocks of ``model`` whose branch can be dropped, in definition order.

    Each block's ``groups`` are named by rules that match Torch-Pruning's group roots on the families above;
    given an ``example`` input, they are taken from group discovery instead (exact for any model, one trace).
    """
    out = []
    for name, mod in model.named_modules():
        if not name or isinstance(mod, DroppedBlock):
            continue
        fam = _family_of(mod)
        if fam is not None:
            out.append(ResidualBlock(name=name, family=fam.name, groups=_inner_groups(mod, fam, name)))
    if example is not None and out:
        _, specs, _ = discover_groups(model, example)
        out = [ResidualBlock(b.name, b.family, branch_groups(b, specs)) for b in out]
    return out


def dropped_equivalent(block: nn.Module) -> DroppedBlock:
    """The :class:`DroppedBlock` standing in for ``block`` (sharing its shortcut module, not a copy)."""
    fam = _family_of(block)
    if fam is None:
        raise InputError(f"{type(block).__name__} is not a removable residual block")
    shortcut = getattr(block, fam.shortcut) if fam.shortcut else None
    if isinstance(shortcut, nn.Identity):
        shortcut = None
    return DroppedBlock(shortcut, fam.shortcut or "shortcut", _fresh_act(fam.act(block)))


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at module path ``name``; returns the module it replaced."""
    parent, child = _parent(model, name)
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def drop_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Drop the residual branches of the blocks ``names`` in place (see the module docstring); returns ``model``.

    Raises :class:`InputError` naming a block that is not removable (listed by :func:`removable_blocks`).
    """
    names = list(dict.fromkeys(names))
    if not names:
        return model
    modules = dict(model.named_modules())
    for name in names:
        mod = modules.get(name)
        if mod is None or isinstance(mod, DroppedBlock) or _family_of(mod) is None:
            valid = [b.name for b in removable_blocks(model)]
            raise InputError(f"'{name}' is not a removable residual block of this model; removable: {valid[:12]}"
                             + (" ..." if len(valid) > 12 else ""))
    for name in names:
        replace_module(model, name, dropped_equivalent(modules[name]))
    return model


@contextmanager
def temporarily_dropped(model: nn.Module, name: str) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs with block ``name`` dropped; it is put back afterwards."""
    block = model.get_submodule(name)
    old = replace_module(model, name, dropped_equivalent(block))
    try:
        yield model
    finally:
        replace_module(model, name, old)


@torch.no_grad()
def first_layer_after_drops(model: nn.Module, example: Tensor) -> str | None:
    """The first ungrouped conv / linear that runs after the first dropped block of ``model`` (None: none).

    Least-squares compensation re-fits every layer from there on, so that the layers after a dropped block
    reproduce the dense model's outputs.
    """
    seen: list[bool] = [False]
    found: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, DroppedBlock):
            hooks.append(mod.register_forward_hook(lambda m, i, o: seen.__setitem__(0, True)))
        elif isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d | nn.Conv1d) and mod.groups == 1):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: found.append(name) if seen[0] and not found else None))
    was_training = model.training
    model.eval()
    try:
        model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found[0] if found else None
