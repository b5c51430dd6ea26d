"""Architecture registry: name -> builder plus the metadata a user needs (input size, normalisation).

Same pattern as torchvision's ``register_model`` / ``get_model`` / ``list_models``. Third-party
architectures arrive through the ``simprune.architectures`` entry-point group: each entry point names a
module (imported, so its ``@register_arch`` decorators run) or a callable taking no arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import Any

from torch import nn

ENTRY_POINT_GROUP = "simprune.architectures"


@dataclass(frozen=True)
class ArchInfo:
    """What the zoo knows about an architecture."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    in_channels: int = 3
    family: str = ""
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    verified: bool = True
    """Whether this architecture's family is covered by simprune's tests (pruning and verified exports)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("builder")
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"], d["tags"] = list(self.mean), list(self.std), list(self.tags)
        return d


_ARCHS: dict[str, ArchInfo] = {}
_plugins_loaded = False

# Namespaced architectures resolved on demand (``torchvision/<name>``, ``timm/<name>``, ``onnx/<sha>``): a
# prefix maps to (lister of names, resolver name -> ArchInfo). Listing never instantiates a model.
_Lister = Callable[[], list[ArchInfo]]
_Resolver = Callable[[str], ArchInfo]
_NAMESPACES: dict[str, tuple[_Lister | None, _Resolver]] = {}


def register_namespace(prefix: str, resolve: _Resolver, lister: _Lister | None = None) -> None:
    """Resolve names starting with ``prefix`` (e.g. ``"timm/"``) with ``resolve``; ``lister`` enumerates them."""
    _NAMESPACES[prefix] = (lister, resolve)


def register_arch(
    name: str,
    *,
    input_size: tuple[int, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    in_channels: int = 3,
    family: str = "",
    description: str = "",
    tags: tuple[str, ...] = (),
    verified: bool = True,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(num_classes=..., in_channels=...) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ARCHS:
            raise ValueError(f"architecture '{name}' is already registered")
        _ARCHS[name] = ArchInfo(
            name=name,
            builder=builder,
            input_size=tuple(input_size),
            mean=tuple(mean),
            std=tuple(std),
            num_classes=num_classes,
            in_channels=in_channels,
            family=family,
            description=description or (builder.__doc__ or "").strip().split("\n")[0],
            tags=tuple(tags),
            verified=verified,
        )
        return builder

    return wrap


def _ensure_loaded() -> None:
    global _plugins_loaded
    importlib.import_module("simprune.zoo._builtin")  # registers the built-in architectures (no import cycle)

    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if callable(obj):
            obj()


def list_archs(search: str | None = None, *, libraries: bool = False) -> list[ArchInfo]:
    """Registered architectures sorted by name; with ``libraries`` also every ``torchvision/`` and ``timm/``
    entry. ``search`` keeps names containing it (case-insensitive)."""
    _ensure_loaded()
    out = [_ARCHS[k] for k in sorted(_ARCHS)]
    if libraries:
        for lister, _ in _NAMESPACES.values():
            if lister is not None:
                out.extend(sorted(lister(), key=lambda a: a.name))
    if search:
        needle = search.lower()
        out = [a for a in out if needle in a.name.lower()]
    return out


def get_arch(name: str) -> ArchInfo:
    """The :class:`ArchInfo` for ``name``; ``KeyError`` with the valid names when unknown."""
    _ensure_loaded()
    if name in _ARCHS:
        return _ARCHS[name]
    for prefix, (_, resolve) in _NAMESPACES.items():
        if name.startswith(prefix):
            return resolve(name)
    spaces = "".join(f", {p}<name>" for p in _NAMESPACES)
    raise KeyError(f"unknown architecture '{name}'; known: {', '.join(sorted(_ARCHS))}{spaces}")


def build_model(name: str, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """Build ``name`` with optional ``num_classes`` / ``in_channels`` overrides (random init)."""
    info = get_arch(name)
    kwargs: dict[str, Any] = {"num_classes": num_classes or info.num_classes}
    if in_channels is not None and in_channels != info.in_channels:
        kwargs["in_channels"] = in_channels
    return info.builder(**kwargs)
