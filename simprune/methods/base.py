"""What a method is: the :class:`Method` base every registered method derives from, and the criterion
contract (:class:`Criterion`) that the pruning phases drive.

A method is a dataclass whose fields are its options. :func:`option` declares one with its help text and
range; :meth:`Method.options_model` turns the fields into a pydantic model, so a job's options are checked
(type, range, unknown keys) where the job is submitted. :meth:`Method.run` takes a :class:`RunContext` from the
job pipeline and returns a :class:`MethodResult`; a criterion's ``run`` asks the context to prune with it.

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
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model
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


_CONSTRAINTS = ("ge", "gt", "le", "lt")


def option(default: Any, help: str, **constraints: Any) -> Any:
    """Declare a method option (a dataclass field) with its help text and bounds (``ge``, ``gt``, ``le``,
    ``lt``); choices are spelled as a ``Literal[...]`` annotation."""
    bad = set(constraints) - set(_CONSTRAINTS)
    if bad:
        raise TypeError(f"unknown option constraint(s) {sorted(bad)}")
    return field(default=default, metadata={"help": help, **constraints})


@dataclass
class MethodResult:
    """What :meth:`Method.run` returns: the pruned model and its report; ``plan``/``rebuild`` when the method
    writes its own plan format (None: the pipeline writes the standard channel plan); ``timings`` in seconds."""

    model: nn.Module
    report: dict[str, Any]
    plan: dict[str, Any] | None = None
    rebuild: Callable[[Path, Path], nn.Module] | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class RunContext:
    """What the job pipeline hands a method: the validated spec, the loaded model's facts, data, callbacks,
    and the pipeline's services (``prune`` with the job's allocation/compensation, ``train_setup`` for methods
    that train, ``plan`` for the standard channel plan)."""

    spec: Any
    """The :class:`simprune.jobspec.JobSpec`."""
    dense: nn.Module
    """The loaded dense model (on ``device``, eval mode); methods must not modify it."""
    arch: str
    out_dir: Path
    device: torch.device
    example: torch.Tensor
    input_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int | None
    in_channels: int
    calib: Any
    evals: Any
    progress: Callable[..., None]
    """``progress(fraction, label=None)`` within the method's share of the job."""
    train_progress: Callable[[str], Callable[..., None]]
    """``train_progress(label)``: a progress callback for :func:`simprune.finetune.finetune`."""
    should_cancel: Callable[[], bool]
    prune: Callable[[Criterion], tuple[nn.Module, dict[str, Any]]]
    train_setup: Callable[[str], tuple[Any, Any, Path]]
    """``train_setup(what)`` -> (training dataset, FinetuneConfig, checkpoint dir)."""
    plan: Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Method:
    """Base class of every method a job can name. Subclasses are dataclasses whose fields are the options.

    Class attributes: ``name`` (the registry key), ``summary``, ``needs_data`` (calibration data required),
    ``trains`` (the method trains the network itself: training data and ``finetune.epochs`` required).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    trains: ClassVar[bool] = False

    def run(self, ctx: RunContext) -> MethodResult:
        """Prune (and, for training methods, train) ``ctx``'s dense model; see :class:`RunContext`."""
        raise NotImplementedError(f"method '{self.name}' does not implement run()")

    def check_job(self, spec: Any) -> list[tuple[str, str]]:
        """Method-specific rules on the whole job spec: ``(field, message)`` per violation (none by default)."""
        return []

    @classmethod
    def options_model(cls) -> type[BaseModel]:
        """A pydantic model of the options: strict types, bounds, no unknown keys, finite numbers."""
        return _options_model(cls)

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options with defaults filled in; :class:`pydantic.ValidationError` when they are invalid."""
        return cls.options_model().model_validate(options).model_dump()

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The JSON-able catalogue entry: name, summary, needs_data, needs_training_data, trains, kind,
        options (name, type, default, help, bounds, choices) and the options' JSON schema."""
        schema = cls.options_model().model_json_schema()
        opts = []
        for f in dataclasses.fields(cls):
            prop = schema["properties"][f.name]
            entry = {"name": f.name, "type": _type_name(prop), "default": prop.get("default"),
                     "help": f.metadata.get("help", "")}
            entry.update({k: f.metadata[k] for k in _CONSTRAINTS if k in f.metadata})
            choices = _choices(prop)
            if choices:
                entry["choices"] = choices
            opts.append(entry)
        return {"name": cls.name, "summary": cls.summary, "kind": "criterion" if issubclass(cls, Criterion)
                else "training", "needs_data": cls.needs_data, "needs_training_data": cls.trains,
                "trains": cls.trains, "options": opts, "options_schema": schema}


@cache
def _options_model(cls: type[Method]) -> type[BaseModel]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        bounds = {k: f.metadata[k] for k in _CONSTRAINTS if k in f.metadata}
        fields[f.name] = (hints[f.name], Field(default=f.default, description=f.metadata.get("help"), **bounds))
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, title=f"{cls.name} options")
    return create_model(f"{cls.__name__}Options", __config__=config, **fields)


def _type_name(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return "|".join(_type_name(p) for p in prop["anyOf"])
    if "enum" in prop or "const" in prop:
        return "choice"
    return {"number": "float", "integer": "int", "boolean": "bool", "string": "str"}.get(prop.get("type", ""),
                                                                                          str(prop.get("type")))


def _choices(prop: dict[str, Any]) -> list[Any] | None:
    for p in [prop, *prop.get("anyOf", [])]:
        if "enum" in p:
            return list(p["enum"])
    return None


@dataclass
class Criterion(Method):
    """A selection criterion: the pruning phases ask it which channels of each group to keep.

    Subclasses implement :meth:`scores` (and may override :meth:`select` / :meth:`auto_keep`).
    """

    seed: int = option(0, "random seed (ties, sampling)")
    scores_own_weights: ClassVar[bool] = False
    """The scores read only the group's producing layer and its BatchNorm (no feature maps, no other layer):
    sequential selection then chooses what one-shot selection does where no earlier cut changes those layers
    (:func:`simprune.pruning.sequential.order_free`)."""

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        raise NotImplementedError(f"criterion '{self.name}' does not implement scores()")

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

    def run(self, ctx: RunContext) -> MethodResult:
        """Prune with this criterion under the job's allocation and compensation (the pipeline's ``prune``)."""
        model, report = ctx.prune(self)
        timings = {f"prune.{k}": v for k, v in report.pop("timings").items() if k != "total_s"}
        return MethodResult(model=model, report=report, timings=timings)


def normalize_scores(s: torch.Tensor) -> torch.Tensor:
    """Scale a layer's scores to mean 1 so that layers can be ranked together (global allocation)."""
    s = s.float()
    return s / s.abs().mean().clamp_min(1e-12)


ScoreFn = Callable[[ChannelGroup], torch.Tensor]
