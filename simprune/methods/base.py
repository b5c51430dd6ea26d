"""The criterion contract: one callable per method, registered by name.

A criterion answers, for one prunable channel group, which output channels to keep. It sees the group's
producing layer (``conv``), its BatchNorm, the layers that consume the channels, and, for data-driven methods,
the feature maps the consumers receive on calibration data.

Contract (mirrors Torch-Pruning's ``Importance``, extended for selection and merging):

* ``scores(group) -> Tensor[C]``: higher means more important. Used for ranking and global allocation, so
  it should be comparable across layers after :func:`normalize_scores`.
* ``select(group, n_keep) -> Selection``: the kept indices (sorted) and, optionally, a merge map telling
  compensation which kept channel absorbs each removed one. The default keeps the ``n_keep`` best scores.
* ``auto_keep(group) -> int | None``: the method's own kept count (``--pruning-ratio auto``); ``None`` when
  the method has none.

Example::

    >>> import torch
    >>> from simprune.methods import get_criterion
    >>> conv = torch.nn.Conv2d(3, 4, 3)
    >>> g = ChannelGroup(name="conv", conv=conv, bn=None, n_channels=4)
    >>> get_criterion("l1").select(g, 2).keep.tolist()  # doctest: +SKIP
    [0, 3]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class Consumer:
    """A layer whose input channels are (exactly) the group's channels.

    ``offset`` is where the group's channels start in the consumer's input (non-zero after a concat).
    """

    name: str
    module: nn.Module
    offset: int = 0


@dataclass
class ChannelGroup:
    """One prunable set of coupled output channels, seen from its producing layer."""

    name: str
    conv: nn.Module
    bn: nn.BatchNorm2d | None
    n_channels: int
    consumers: list[Consumer] = field(default_factory=list)
    coupled: list[str] = field(default_factory=list)
    features: torch.Tensor | None = None
    """Calibration feature maps as the consumers receive them, shape (N, C, H, W) (or (N, C) after pooling)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weight(self) -> torch.Tensor:
        """The producing layer's weight, detached: (C_out, C_in/groups, kh, kw) or (C_out, C_in)."""
        return self.conv.weight.detach()


@dataclass
class Selection:
    """What a criterion decided for one group.

    ``merge`` maps a removed channel to ``(kept_channel, alpha, beta)``: the removed map is approximately
    ``alpha * F_kept + beta``; compensation folds it into the consumers. ``None`` lets compensation decide.
    """

    keep: torch.Tensor
    merge: dict[int, tuple[int, float, float]] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keep = torch.as_tensor(self.keep, dtype=torch.long).sort().values


class CriterionError(ValueError):
    """A criterion cannot run with what it was given (for example, no calibration data)."""


@dataclass
class Criterion:
    """Base class. Subclasses are dataclasses whose fields are the method's options."""

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    seed: int = 0

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        raise NotImplementedError

    def select(self, group: ChannelGroup, n_keep: int) -> Selection:
        s = self.scores(group)
        keep = torch.topk(s.float(), k=n_keep, largest=True).indices
        return Selection(keep=keep)

    def auto_keep(self, group: ChannelGroup) -> int | None:
        return None

    def check(self, group: ChannelGroup) -> None:
        """Raise :class:`CriterionError` when a data-driven method has no feature maps."""
        if self.needs_data and group.features is None:
            raise CriterionError(
                f"method '{self.name}' needs calibration data (--calib / calibration_dataset_id); none was given"
            )

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, summary, whether it needs data, and its options with types and defaults."""
        opts = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            opts.append({"name": f.name, "type": str(f.type), "default": default})
        return {"name": cls.name, "summary": cls.summary, "needs_data": cls.needs_data, "options": opts}


_REGISTRY: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: make a criterion available by its ``name``."""
    if not cls.name:
        raise ValueError("criterion class needs a non-empty `name`")
    _REGISTRY[cls.name] = cls
    return cls


def get_criterion(name: str, **options: Any) -> Criterion:
    """Instantiate a registered criterion with its options; unknown names/options raise ``ValueError``."""
    from simprune.methods import _load_builtin  # noqa: F401  (import side effect: registration)

    if name not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = set(options) - valid
    if bad:
        raise ValueError(f"method '{name}' has no option(s) {sorted(bad)}; valid: {sorted(valid)}")
    return cls(**options)


def list_criteria() -> list[dict[str, Any]]:
    """Every registered criterion's :meth:`Criterion.describe`."""
    from simprune.methods import _load_builtin  # noqa: F401

    return [_REGISTRY[k].describe() for k in sorted(_REGISTRY)]


def normalize_scores(s: torch.Tensor) -> torch.Tensor:
    """Scale a layer's scores to mean 1 so that layers can be ranked together (global allocation)."""
    s = s.float()
    return s / s.abs().mean().clamp_min(1e-12)


ScoreFn = Callable[[ChannelGroup], torch.Tensor]
