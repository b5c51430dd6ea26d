"""Build a zoo architecture that fits a given state dict, and load it with clear errors.

``build_for_state_dict`` reads the number of classes from the classifier weight and the number of input
channels from the stem convolution, builds the architecture with those values and loads the weights with
:func:`load_state_dict_lenient`. Every mismatch is reported as :class:`simprune.errors.InputError` naming
the offending keys, never as a raw ``RuntimeError`` from ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import torch
from torch import nn

from simprune.errors import InputError
from simprune.zoo.registry import ArchInfo, build_model, get_arch

_SHOW = 5  # how many keys an error message lists per category
_MODULE_PREFIX = "module."


def _preview(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix that ``DataParallel``/DDP adds, when every key carries it."""
    keys = list(state_dict)
    if keys and all(isinstance(k, str) and k.startswith(_MODULE_PREFIX) for k in keys):
        return {k[len(_MODULE_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _check_tensors(state_dict: Mapping[str, Any]) -> None:
    bad = [str(k) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        hint = ""
        if "state_dict" in bad or "model" in bad:
            hint = " (this looks like a training checkpoint; pass its inner 'state_dict'/'model' entry)"
        raise InputError(f"state dict entries must map names to tensors; not tensors: {_preview(bad)}{hint}")


def load_state_dict_lenient(
    model: nn.Module, state_dict: Mapping[str, Any], arch: str | None = None
) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly, except that ``num_batches_tracked`` may be absent.

    A common ``module.`` prefix is stripped. Any other missing key, any unexpected key or any shape mismatch
    raises :class:`InputError` listing the first few offending keys. Returns ``model``.
    """
    own = model.state_dict()
    if not any(k.startswith(_MODULE_PREFIX) for k in own):
        state_dict = strip_module_prefix(state_dict)
    _check_tensors(state_dict)
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        what = f"architecture '{arch}'" if arch else f"model {type(model).__name__}"
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_preview(mismatched)}")
        raise InputError(f"checkpoint does not match {what}: " + "; ".join(parts))
    try:
        model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied into the parameter
        raise InputError(f"could not load checkpoint into {type(model).__name__}: {exc}") from exc
    return model


def _info(arch: str) -> ArchInfo:
    try:
        return get_arch(arch)
    except KeyError as exc:
        raise InputError(str(exc.args[0]) if exc.args else f"unknown architecture '{arch}'") from exc


@cache
def _layer_names(arch: str) -> tuple[str | None, str | None]:
    """(classifier module name, stem conv name) of ``arch``, found on a parameter-free ``meta`` build."""
    info = _info(arch)
    try:
        with torch.device("meta"):  # no memory, no init cost
            model = info.builder(num_classes=info.num_classes)
    except (NotImplementedError, RuntimeError):  # builders that compute on tensors (torchvision RegNet)
        model = info.builder(num_classes=info.num_classes)
    classifier: str | None = None
    last_conv_head: str | None = None
    stem: str | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            classifier = name
        elif isinstance(m, nn.Conv2d):
            if stem is None:
                stem = name
            if m.out_channels == info.num_classes and m.kernel_size == (1, 1):
                last_conv_head = name
    return classifier or last_conv_head, stem


def infer_num_classes(arch: str, state_dict: Mapping[str, Any]) -> int | None:
    """Number of classes in ``state_dict``: dim 0 of the classifier weight of ``arch`` (None if absent)."""
    classifier, _ = _layer_names(arch)
    sd = strip_module_prefix(state_dict)
    w = sd.get(f"{classifier}.weight") if classifier is not None else None
    if isinstance(w, torch.Tensor) and w.ndim >= 2:
        return int(w.shape[0])
    return None


def infer_in_channels(arch: str, state_dict: Mapping[str, Any]) -> int | None:
    """Number of input channels stored in ``state_dict``: dim 1 of the stem conv weight (None if absent)."""
    _, stem = _layer_names(arch)
    sd = strip_module_prefix(state_dict)
    w = sd.get(f"{stem}.weight") if stem is not None else None
    if isinstance(w, torch.Tensor) and w.ndim == 4:
        return int(w.shape[1])
    return None


def _resolve(label: str, explicit: int | None, found: int | None, default: int, arch: str) -> int:
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1:
            raise InputError(f"{label} must be a positive integer, got {explicit!r}")
        if found is not None and found != explicit:
            raise InputError(
                f"{label}={explicit} was requested but the checkpoint for '{arch}' has {label}={found}; "
                f"omit {label} to use the checkpoint's value"
            )
        return explicit
    return found if found is not None else default


def build_for_state_dict(
    arch: str,
    state_dict: Mapping[str, Any],
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> nn.Module:
    """Build ``arch`` with the class / input-channel counts the checkpoint implies and load its weights.

    Explicit ``num_classes`` / ``in_channels`` win when they agree with the checkpoint; a disagreement, an
    unknown architecture or weights of another architecture raise :class:`InputError`.
    """
    info = _info(arch)
    sd = strip_module_prefix(state_dict)
    _check_tensors(sd)
    nc = _resolve("num_classes", num_classes, infer_num_classes(arch, sd), info.num_classes, arch)
    ic = _resolve("in_channels", in_channels, infer_in_channels(arch, sd), info.in_channels, arch)
    model = build_model(arch, num_classes=nc, in_channels=ic)
    return load_state_dict_lenient(model, sd, arch=arch)
