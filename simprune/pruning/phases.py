"""``simprune.prune``: structured pruning of a model to a ratio or a FLOPs target, with a report.

:func:`prune` runs one :class:`PruneRun` through its phases, in order:

1. :func:`_options`: validation and defaults (criterion, allocation and compensation settings, device);
2. :func:`_groups`: copy the model, count its FLOPs, discover the prunable channel groups;
3. :func:`_features`: calibration feature maps, when a data-driven criterion or folding needs them;
4. :func:`_scores`: per-group channel scores, when the allocation ranks them;
5. :func:`_allocation`: the kept channel count of every group (uniform, global, sensitivity or "auto");
6. :func:`_selection`: which channels each group keeps (one-shot, or group by group with re-fitting);
7. :func:`_compensation`: fold removed channels into kept ones, cut the channels, re-fit the layers by
   least squares, re-estimate BatchNorm statistics;
8. :func:`_report`: FLOPs/params before and after, per-layer rows, the replayable plan, timings.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from simprune.compensation.block_recon import block_units, reconstruct_blocks
from simprune.compensation.fold import fold_removed
from simprune.compensation.lstsq import reconstruct_consumers
from simprune.compensation.output_recon import AUGMENTS, KEEPS, MIX_CHOICES, reconstruct_outputs
from simprune.compute import channels_last, cpu_vector_isa, to_channels_last
from simprune.device import select_device
from simprune.errors import InputError, JobCancelled
from simprune.flops import count_model
from simprune.methods import get_criterion
from simprune.methods.base import ChannelGroup, Criterion, Selection
from simprune.profiles import DeviceProfile
from simprune.pruning.allocation import (
    SENSITIVITY_DEFAULTS,
    BlockOption,
    block_damage_scan,
    budgeted_keep,
    global_keep,
    min_ratio_meeting,
    refine_to_target,
    search_ratio,
    sensitivity_keep,
    sensitivity_scan,
    uniform_keep,
)
from simprune.pruning.batchnorm import reestimate_bn
from simprune.pruning.blocks import (
    branch_groups,
    drop_blocks,
    first_layer_after_drops,
    removable_blocks,
    temporarily_dropped,
)
from simprune.pruning.features import collect_features, first_inputs, iter_inputs, to_channel_group
from simprune.pruning.groups import ChannelMultiple, FlopsModel, GroupSpec, discover_groups, module_keep
from simprune.pruning.latency_model import LATENCY_MODELS, LatencyModel, default_latency_model
from simprune.pruning.report import per_layer_rows
from simprune.pruning.sequential import order_free, prune_sequentially
from simprune.pruning.surgery import remove_channels

ProgressFn = Callable[[str, float], None]
DetailFn = Callable[[str, dict[str, Any]], None]
"""``detail(stage, info)``: what a stage has done, ``{"what": "groups scored", "done": 3, "total": 19}``."""

log = logging.getLogger(__name__)

FLOPS_MISS = 0.03
"""A pruned model whose measured FLOPs reduction is further than this from a FLOPs target gets a report warning
(the search meets targets within half a point; a wider miss means Torch-Pruning pruned outside the plan)."""

DEFAULT_COMPENSATION = {"fold": True, "lstsq": True, "bn": True, "block_recon": False, "output_recon": False}
DEFAULT_COMPENSATION_OPTIONS: dict[str, Any] = {"layers": "all", "bn_inline": True, "min_r2": 0.0,
                                                "sequential": False, "sequential_images": 1024,
                                                "block_recon_steps": 200, "block_recon_images": 512,
                                                "block_recon_lr": 2e-3, "output_recon_steps": 1000,
                                                "output_recon_images": 1024, "output_recon_lr": 5e-4,
                                                "output_recon_temperature": 4.0, "output_recon_batch": 64,
                                                "output_recon_augment": "shift_flip",
                                                "output_recon_mix": "auto", "output_recon_keep": "best",
                                                "recon_bf16": None, "output_recon_teacher_bf16": None,
                                                "recon_budget_macs": None}
"""Fine control of compensation: ``layers`` ("consumers" | "all") re-fitted by least squares, ``bn_inline``
(re-estimate BatchNorms inside the least-squares pass instead of after it), ``min_r2`` (folding threshold),
``sequential`` (select, remove and re-fit one group at a time on the pruned model's features, see
:mod:`simprune.pruning.sequential`; needs least squares), ``sequential_images``, ``block_recon_steps``,
``block_recon_images`` and ``block_recon_lr`` (the ``block_recon`` switch: label-free block reconstruction, see
:mod:`simprune.compensation.block_recon`), ``output_recon_steps``, ``output_recon_images``, ``output_recon_lr``,
``output_recon_temperature``, ``output_recon_batch``, ``output_recon_augment``, ``output_recon_mix`` and
``output_recon_keep`` (the ``output_recon`` switch: label-free output reconstruction, see
:mod:`simprune.compensation.output_recon`), ``recon_bf16`` (both reconstructions under bfloat16 autocast, weights
and losses in fp32: True, False, or None, the default = where the device computes bf16 natively, see
:mod:`simprune.compute`; on ResNet-56 the output stage 23% faster at the same 3-seed accuracy, BENCHMARKS.md
session 20),
``output_recon_teacher_bf16`` (the output stage's dense forward under bf16 autocast even where ``recon_bf16`` is
False; None, the default: where the device computes bf16 natively; 10-13% off the stage's time on a CPU with
AMX, accuracy unchanged over 3 seeds on both CIFAR ResNets, BENCHMARKS.md session 17),
``recon_budget_macs``
(None, or a model cost in multiply-accumulates per input: the two reconstructions' step counts are scaled down
by ``budget / the dense model's MACs`` when the model costs more, not below :data:`RECON_MIN_STEPS`, so their
compute stays about that of the budget's model, and the output stage's learning rate with the square root of
its steps' ratio, :func:`output_recon_lr`; the ``best`` preset's, see :mod:`simprune.presets`), and
:func:`~simprune.compensation.lstsq.reconstruct_consumers`'s ``ridge``, ``max_rows``, ``max_images``."""
LSTSQ_OPTIONS = ("layers", "ridge", "max_rows", "max_images", "seed")
RECON_MIN_STEPS = {"block_recon_steps": 200, "output_recon_steps": 300}
"""The fewest steps a reconstruction stage's ``recon_budget_macs`` scaling leaves (the ``balanced`` preset's)."""
SCAN_MIN_IMAGES = 128
"""The fewest sensitivity-scan images the allocation option ``budget_macs`` leaves (the ``balanced`` preset's)."""


def budgeted(count: int, budget: float | None, dense_macs: int, floor: int) -> int:
    """``count`` (steps or images of a stage whose cost grows with the model's) scaled by ``budget /
    dense_macs`` where that is under 1, so the stage costs about what it costs on a model of ``budget`` MACs;
    never below ``floor`` (nor above ``count``). ``budget`` None: ``count``."""
    if not budget:
        return int(count)
    scaled = round(int(count) * min(1.0, float(budget) / max(int(dense_macs), 1)))
    return max(min(int(count), floor), scaled)


def recon_steps(copts: dict[str, Any], key: str, dense_macs: int) -> int:
    """The steps of a reconstruction stage (``key``: ``block_recon_steps`` or ``output_recon_steps``) under the
    option ``recon_budget_macs`` (:func:`budgeted`, not below :data:`RECON_MIN_STEPS`)."""
    return budgeted(int(copts[key]), copts.get("recon_budget_macs"), dense_macs, RECON_MIN_STEPS[key])


def output_recon_lr(copts: dict[str, Any], dense_macs: int) -> float:
    """The output reconstruction's learning rate: ``output_recon_lr``, times sqrt(steps run / steps asked) where
    ``recon_budget_macs`` cut the steps (:func:`recon_steps`). A fit cut short at the full rate can end no
    better on its held-out images than it started and keep nothing: ResNet-56 in ``best`` (327 of 1,000 steps)
    at 5e-4 kept nothing on one calibration seed in three (82.00; mean 82.67 over seeds 0-2), at 2.86e-4
    (5e-4 x sqrt(0.327)) every seed gained (82.79 / 82.68 / 82.85, mean 82.77; BENCHMARKS.md, session 16)."""
    lr = float(copts["output_recon_lr"])
    asked = int(copts["output_recon_steps"])
    run = recon_steps(copts, "output_recon_steps", dense_macs)
    return lr * math.sqrt(run / asked) if 0 < run < asked else lr


def _check_budget(name: str, budget: Any) -> None:
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)
                               or not math.isfinite(budget) or budget <= 0):
        raise InputError(f"{name} must be a positive number of MACs or None, not {budget!r}")


def chunked_select(crit: Criterion, group: ChannelGroup, n_keep: int, chunks: int) -> Selection:
    """Selection for groups split by grouped convs: the same positions are kept in every chunk."""
    if chunks == 1:
        return crit.select(group, n_keep)
    scores = crit.scores(group).float().view(chunks, -1).mean(0)
    per = n_keep // chunks
    pos = torch.topk(scores, per).indices.sort().values
    size = group.n_channels // chunks
    keep = torch.cat([pos + c * size for c in range(chunks)])
    return Selection(keep=keep, info={"chunked": chunks})


def _fold_group(group: ChannelGroup, selection: Selection, min_r2: float) -> None:
    fold_removed(group, selection, min_r2=min_r2)


@dataclass
class PruneRun:
    """What one :func:`prune` call carries from phase to phase."""

    # settings (the options phase)
    crit: Criterion
    calib: Any
    device: torch.device
    allocation: str
    target_flops_reduction: float | None
    pruning_ratio: float | str | None
    round_to: int | None
    aopts: dict[str, Any]
    comp: dict[str, bool]
    copts: dict[str, Any]
    progress: ProgressFn
    should_cancel: Callable[[], bool] | None
    t0: float
    # the models and their groups (the groups phase)
    work: nn.Module | None = None
    dense: nn.Module | None = None
    example: torch.Tensor | None = None
    before: dict[str, Any] = field(default_factory=dict)
    dg: Any = None
    specs: list[GroupSpec] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    flops_model: FlopsModel | None = None
    # features, scores, allocation, selection, compensation
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    groups: dict[str, ChannelGroup] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    sensitivity: dict[str, dict[int, float]] = field(default_factory=dict)
    chosen_ratio: float | str | None = None
    keep_counts: dict[str, int] = field(default_factory=dict)
    sequential: bool = False
    sequential_skipped: bool = False
    """Sequential selection was asked for but would choose what one-shot selection does (it ran one-shot)."""
    selections: dict[str, Selection] = field(default_factory=dict)
    plan_layers: list[dict[str, Any]] = field(default_factory=list)
    lstsq_info: dict[str, Any] = field(default_factory=dict)
    block_recon_info: dict[str, Any] = field(default_factory=dict)
    output_recon_info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    clock: float = 0.0
    detail: DetailFn | None = None
    # depth (dropped residual blocks) and latency targets
    drop_names: list[str] = field(default_factory=list)
    target_speedup: float | None = None
    profile: DeviceProfile | None = None
    measured_rounds: list[dict[str, Any]] = field(default_factory=list)
    measured_choice: float | None = None  # the measured speedup of the pruning chosen by those rounds
    ignored_layers: list[str] | None = None
    dropped: list[dict[str, Any]] = field(default_factory=list)
    block_damage: dict[str, float] = field(default_factory=dict)
    block_flops: dict[str, int] = field(default_factory=dict)
    missing_groups: list[str] = field(default_factory=list)
    missing_blocks: list[str] = field(default_factory=list)
    latency_model: LatencyModel | None = None

    @property
    def dropped_names(self) -> list[str]:
        return [d["name"] for d in self.dropped]

    def count(self, stage: str, lo: float, hi: float, what: str, done: int, total: int) -> None:
        """Progress ``done``/``total`` through a stage that spans [lo, hi] of the run, with its detail."""
        self.progress(stage, lo + (hi - lo) * done / max(total, 1))
        if self.detail is not None:
            self.detail(stage, {"what": what, "done": done, "total": total})

    def stage_done(self, name: str) -> None:
        """Record the seconds since the last stage ended as stage ``name``'s and restart the clock."""
        self.timings[name] = round(time.perf_counter() - self.clock, 4)
        self.clock = time.perf_counter()

    def cancelled(self) -> bool:
        return bool(self.should_cancel and self.should_cancel())


# --------------------------------------------------------------------------------------------------------
# 1. options


def _check_latency(target_speedup: float | None, profile: DeviceProfile | None,
                   target_flops_reduction: float | None, pruning_ratio: float | str | None) -> None:
    if (target_speedup is None) != (profile is None):
        raise InputError("target_speedup and latency_profile go together: give both or neither")
    if target_speedup is None:
        return
    if target_flops_reduction is not None or pruning_ratio is not None:
        raise InputError("give target_speedup or one of target_flops_reduction and pruning_ratio, not both")
    if not isinstance(profile, DeviceProfile):
        raise InputError("latency_profile must be a simprune.profiles.DeviceProfile")
    if not 1.0 < float(target_speedup) <= 100.0:
        raise InputError("target_speedup must be above 1 (and at most 100)")


def _check_targets(target_flops_reduction: float | None, pruning_ratio: float | str | None, allocation: str,
                   calib: Any, target_speedup: float | None = None) -> None:
    if target_speedup is None and (target_flops_reduction is None) == (pruning_ratio is None):
        raise InputError("give exactly one of target_flops_reduction and pruning_ratio")
    if isinstance(pruning_ratio, str) and pruning_ratio != "auto":
        raise InputError("pruning_ratio must be a number in [0, 1) or 'auto'")
    if isinstance(pruning_ratio, int | float) and not 0.0 <= float(pruning_ratio) < 1.0:
        raise InputError("pruning_ratio must be in [0, 1)")
    if allocation not in ("uniform", "global", "sensitivity"):
        raise InputError("allocation must be 'uniform', 'global' or 'sensitivity'")
    if allocation == "sensitivity" and calib is None:
        raise InputError("allocation 'sensitivity' needs calibration data (--calib)")
    if allocation == "sensitivity" and pruning_ratio == "auto":
        raise InputError("allocation 'sensitivity' needs a FLOPs target or a pruning ratio, not 'auto'")


def _allocation_options(allocation_options: dict[str, Any] | None, allocation: str) -> dict[str, Any]:
    aopts = dict(SENSITIVITY_DEFAULTS)
    unknown = set(allocation_options or {}) - set(aopts)
    if unknown:
        raise InputError(f"unknown allocation options: {sorted(unknown)}")
    aopts.update(allocation_options or {})
    aopts["depth"] = bool(aopts["depth"])
    _check_budget("allocation option budget_macs", aopts["budget_macs"])
    if aopts["latency_model"] not in (None, *LATENCY_MODELS):
        raise InputError(f"allocation option 'latency_model' must be one of {', '.join(LATENCY_MODELS)}")
    if aopts["depth"] and allocation != "sensitivity":
        raise InputError("allocation option 'depth' needs allocation 'sensitivity' (give drop_blocks to drop "
                         "residual blocks with uniform or global allocation)")
    return aopts


def _criterion(method: str | Criterion, method_options: dict[str, Any] | None, calib: Any) -> Criterion:
    crit = method if isinstance(method, Criterion) else get_criterion(method, **(method_options or {}))
    if crit.needs_data and calib is None:
        raise InputError(f"method '{crit.name}' needs calibration data (--calib); none was given")
    return crit


def _compensation_settings(compensation: dict[str, bool] | None, compensation_options: dict[str, Any] | None,
                           calib: Any) -> tuple[dict[str, bool], dict[str, Any]]:
    """The compensation switches (all off without data) and options, defaults filled in."""
    copts = dict(DEFAULT_COMPENSATION_OPTIONS)
    copts.update(compensation_options or {})
    comp = dict(DEFAULT_COMPENSATION)
    given = dict(compensation or {})
    if "sequential" in given:  # a switch like the others, carried in the options
        copts["sequential"] = bool(given.pop("sequential"))
    unknown_comp = set(given) - set(comp)
    if unknown_comp:
        raise InputError(f"unknown compensation switch(es) {sorted(unknown_comp)}; valid: fold, lstsq, bn, "
                         "block_recon, output_recon, sequential")
    comp.update(given)
    _check_budget("recon_budget_macs", copts.get("recon_budget_macs"))
    for key, allowed in (("output_recon_augment", AUGMENTS), ("output_recon_mix", MIX_CHOICES),
                         ("output_recon_keep", KEEPS)):
        if copts[key] not in allowed:  # refused before any work, not at the last stage
            raise InputError(f"compensation option {key} must be one of {', '.join(allowed)}; got {copts[key]!r}")
    if calib is None:
        comp = {k: False for k in comp}
    return comp, copts


DEVICE_ROUND_TO: dict[str, int] = {"cuda": 8}
"""The channel multiple used when a job names none and has no latency profile, per device type of the pruning
run (taken as the deployment device). CUDA: 8, as tensor cores want; measured on an H200 (BENCHMARKS.md): ResNet-50
at 50% FLOPs unrounded ran 0.57x the dense speed in bf16 + channels_last + torch.compile, 1.17x rounded to 8.
CPUs: :data:`CPU_ROUND_TO` by instruction set. ``round_to=1`` turns it off."""
CPU_ROUND_TO: dict[str, int] = {"AVX512": 16, "AVX2": 8}
"""The CPU default by the vector width oneDNN computes fp32 convolutions with (its channel blocks: 16 floats on
AVX-512, 8 on AVX2); a count between two multiples costs the time of the next one up. Measured on a 2-core AVX-512
EPYC, ResNet-50 at 50% FLOPs, 2 threads (BENCHMARKS.md, session 21): speedup 1.30x unrounded, 1.52x with this
default (batch 1); 1.68x and 1.99x (batch 32); under an AVX2 cap 1.53x -> 1.64x and 1.67x -> 1.81x. Other CPUs
(Arm, older x86): none."""
ROUND_MIN_CHANNELS = 128
"""The CPU default rounds only groups of at least this many channels (a step of at most 1/8 of the layer on AVX-512,
1/16 on AVX2). Narrower layers keep any count: on ResNet-56 at 50% FLOPs (`best`, 3 seeds) rounding its 64-channel
layers to 8 cost 0.2 points and its 16-64-channel layers to 16 cost 3 points on one seed, for little speed
(BENCHMARKS.md, session 21)."""


def default_round_to(device: torch.device) -> int | None:
    """The default channel multiple for a run on ``device``, None for no rounding: :data:`DEVICE_ROUND_TO` on
    accelerators (every group); on a CPU :data:`CPU_ROUND_TO` of its instruction set as a
    :class:`~simprune.pruning.groups.ChannelMultiple` that skips groups narrower than :data:`ROUND_MIN_CHANNELS`."""
    if device.type != "cpu":
        return DEVICE_ROUND_TO.get(device.type)
    multiple = CPU_ROUND_TO.get(cpu_vector_isa())
    return ChannelMultiple(multiple, ROUND_MIN_CHANNELS) if multiple else None


def _options(model: nn.Module, method: str | Criterion, *, target_flops_reduction: float | None,
             pruning_ratio: float | str | None, calib: Any, allocation: str, round_to: int | None,
             method_options: dict[str, Any] | None, compensation: dict[str, bool] | None,
             compensation_options: dict[str, Any] | None, device: torch.device | str | None,
             progress: ProgressFn | None, should_cancel: Callable[[], bool] | None,
             allocation_options: dict[str, Any] | None, t0: float, drop_blocks: list[str] | None = None,
             target_speedup: float | None = None, latency_profile: DeviceProfile | None = None) -> PruneRun:
    """Validate the arguments of :func:`prune` and fill in the defaults (raises :class:`InputError`)."""
    _check_latency(target_speedup, latency_profile, target_flops_reduction, pruning_ratio)
    if isinstance(drop_blocks, str):
        raise InputError("drop_blocks must be a list of block names, not a string")
    _check_targets(target_flops_reduction, pruning_ratio, allocation, calib, target_speedup)
    aopts = _allocation_options(allocation_options, allocation)
    if round_to is None and latency_profile is not None:
        round_to = latency_profile.round_to  # the channel multiple the profile found fast
    if round_to is not None and round_to < 1:
        raise InputError("round_to must be a positive integer")
    crit = _criterion(method, method_options, calib)
    comp, copts = _compensation_settings(compensation, compensation_options, calib)
    if device is None:  # where the model is
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    else:
        dev = select_device(device)
    if round_to is None and latency_profile is None:
        round_to = default_round_to(dev)
    return PruneRun(crit=crit, calib=calib, device=dev, allocation=allocation,
                    target_flops_reduction=target_flops_reduction, pruning_ratio=pruning_ratio, round_to=round_to,
                    aopts=aopts, comp=comp, copts=copts, progress=progress or (lambda stage, frac: None),
                    should_cancel=should_cancel, t0=t0, drop_names=list(dict.fromkeys(drop_blocks or [])),
                    target_speedup=None if target_speedup is None else float(target_speedup),
                    profile=latency_profile)


# --------------------------------------------------------------------------------------------------------
# 2. groups, 3. features, 4. scores


def _groups(run: PruneRun, model: nn.Module, example_inputs: torch.Tensor, inplace: bool,
            ignored_layers: list[str] | None) -> None:
    """The working copy (and a dense copy for the stages that fit to the dense model), its FLOPs and groups."""
    work = model if inplace else copy.deepcopy(model)
    work.to(run.device).eval()
    run.work = work
    needs_dense = any(run.comp.get(k) for k in ("lstsq", "block_recon", "output_recon"))
    run.dense = copy.deepcopy(work) if needs_dense else None
    run.example = example_inputs.to(run.device)

    run.clock = time.perf_counter()
    run.progress("analyze", 0.0)
    run.before = count_model(work, run.example)
    run.ignored_layers = ignored_layers
    if run.drop_names:
        _drop(run, run.drop_names, explicit=True)
    else:
        _discover(run)
    run.stage_done("analyze")


def _discover(run: PruneRun) -> None:
    """The prunable groups of the working model (as it is now), its graph and its FLOPs model."""
    run.dg, run.specs, run.skipped = discover_groups(run.work, run.example, run.ignored_layers)
    if not run.specs and not run.dropped:
        raise InputError("this model has no prunable channel groups (all are ignored, frozen or coupled)")
    per_layer = count_model(run.work, run.example)["per_layer"] if run.dropped else run.before["per_layer"]
    run.flops_model = FlopsModel(per_layer, dict(run.work.named_modules()), run.specs)


def _measure_block_flops(run: PruneRun, names: list[str]) -> None:
    """The MACs each block's branch costs in the working model (its drop alone removes them)."""
    now = count_model(run.work, run.example)["flops"]
    for name in names:
        if name not in run.block_flops:
            with temporarily_dropped(run.work, name):
                run.block_flops[name] = now - count_model(run.work, run.example)["flops"]


def _drop(run: PruneRun, names: list[str], explicit: bool) -> None:
    """Drop residual blocks from the working model, then discover its groups again (kept counts carried over)."""
    known = {b.name: b for b in removable_blocks(run.work)}
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(f"'{bad[0]}' is not a removable residual block of this model; removable: "
                         f"{list(known)[:12]}{' ...' if len(known) > 12 else ''}")
    _measure_block_flops(run, names)
    drop_blocks(run.work, names)
    for n in names:
        row: dict[str, Any] = {"name": n, "family": known[n].family, "explicit": explicit,
                               "damage": run.block_damage.get(n), "flops_saved": run.block_flops[n]}
        if run.profile is not None:
            row["ms_saved"] = _block_ms_saving(run, n)
        run.dropped.append(row)
    old_specs, old_keep = run.specs, run.keep_counts
    _discover(run)
    if old_keep:
        run.keep_counts = _carry_keep(old_specs, old_keep, run.specs)
    if run.features:
        run.features = collect_features(run.work, run.specs, run.calib, run.device, run.should_cancel)
    if run.groups:
        run.groups = {s.name: to_channel_group(s, run.features) for s in run.specs}


def _carry_keep(old_specs: list[GroupSpec], old_keep: dict[str, int], specs: list[GroupSpec]) -> dict[str, int]:
    """Kept counts for the groups discovered again after a drop (matched by name, else by a shared member)."""
    by_member = {m: s.name for s in old_specs for m in s.members}
    out = {}
    for s in specs:
        src = s.name if s.name in old_keep else next((by_member[m] for m in s.members if m in by_member), None)
        out[s.name] = min(old_keep.get(src, s.n_channels) if src else s.n_channels, s.n_channels)
    return out


def _features(run: PruneRun) -> None:
    """Calibration feature maps per group, for data-driven criteria and folding."""
    if run.calib is not None and (run.crit.needs_data or run.comp.get("fold")):
        run.progress("features", 0.05)
        run.features = collect_features(run.work, run.specs, run.calib, run.device, run.should_cancel)
        run.stage_done("features")


def _scores(run: PruneRun) -> None:
    """The criterion's view of every group; channel scores when the allocation ranks them."""
    run.progress("scores", 0.15)
    run.groups = {s.name: to_channel_group(s, run.features) for s in run.specs}
    if run.allocation == "global" or run.pruning_ratio is None:
        for i, s in enumerate(run.specs):
            run.crit.check(run.groups[s.name])
            run.scores[s.name] = run.crit.scores(run.groups[s.name]).detach().float().cpu()
            run.count("scores", 0.15, 0.3, "groups scored", i + 1, len(run.specs))
    run.stage_done("scores")


# --------------------------------------------------------------------------------------------------------
# 5. allocation


def _keep_for(run: PruneRun, ratio: float) -> dict[str, int]:
    if run.allocation == "global":
        return global_keep(run.specs, run.scores, ratio, run.round_to)
    return uniform_keep(run.specs, ratio, run.round_to)


def _given_damage(run: PruneRun) -> dict[str, dict[int, float]]:
    damage = {g: {int(k): float(v) for k, v in c.items()} for g, c in dict(run.aopts["damage"]).items()}
    missing = [s.name for s in run.specs if s.name not in damage]
    if missing:
        raise InputError(f"allocation option 'damage' lacks the groups {missing[:5]}")
    return damage


def _scan_damage(run: PruneRun, scan_inputs: torch.Tensor) -> dict[str, dict[int, float]]:
    for s in run.specs:
        run.crit.check(run.groups[s.name])

    def select_keep(spec: GroupSpec, k: int) -> torch.Tensor:
        return chunked_select(run.crit, run.groups[spec.name], k, spec.ch_groups).keep

    return sensitivity_scan(run.work, run.specs, scan_inputs, select_keep, tuple(run.aopts["fractions"]),
                            run.round_to, run.should_cancel, local=str(run.aopts["local"]),
                            progress=lambda done, total: run.count("sensitivity", 0.3, 0.4, "sensitivity probes",
                                                                   done, total))


def _allocate_by_sensitivity(run: PruneRun) -> None:
    """Kept counts (and, with ``depth``, dropped blocks) minimising the summed measured damage under the
    FLOPs or latency target."""
    target = run.target_flops_reduction
    if target is None and run.profile is None:
        uniform = uniform_keep(run.specs, float(run.pruning_ratio), run.round_to)  # type: ignore[arg-type]
        target = 1.0 - run.flops_model.flops(uniform) / run.before["flops"]
    n_scan = budgeted(int(run.aopts["n_images"]), run.aopts["budget_macs"], run.before["flops"], SCAN_MIN_IMAGES)
    scan_inputs = first_inputs(run.calib, n_scan, run.device)
    depth = bool(run.aopts["depth"])
    # the scans run channels-last (the timed rounds of a latency target do not); in fp32: scanned in bf16,
    # ResNet-56's widths changed and `best` lost 0.6 points over 3 seeds (BENCHMARKS.md, session 20)
    with channels_last(run.work, enabled=scan_inputs.dim() == 4) as fmt:
        scan_inputs = to_channels_last(scan_inputs, fmt)
        run.sensitivity = _given_damage(run) if run.aopts.get("damage") else _scan_damage(run, scan_inputs)
        run.timings["sensitivity_scan"] = round(time.perf_counter() - run.clock, 4)
        blocks = _block_options(run, scan_inputs) if depth else []
    run.chosen_ratio = None if run.pruning_ratio is None else float(run.pruning_ratio)
    if not depth and run.profile is None and not run.dropped:
        run.keep_counts = sensitivity_keep(run.specs, run.sensitivity, run.flops_model, run.before["flops"],
                                           target, run.round_to, float(run.aopts["min_keep_frac"]))
        return
    saving, need = _budget(run, target)
    keep, chosen = budgeted_keep(run.specs, run.sensitivity, saving, need, run.round_to,
                                 float(run.aopts["min_keep_frac"]), blocks)
    if run.profile is not None:
        keep, chosen = _correct_by_measurement(run, blocks, keep, chosen)
    run.keep_counts = keep
    if chosen:
        _drop(run, chosen, explicit=False)
    if target is not None:
        run.keep_counts = refine_to_target(run.keep_counts, run.specs, run.flops_model, run.before["flops"],
                                           target, run.round_to)


MEASURE_TOLERANCE = 0.03
"""A measured speedup within 3% of the target ends the correction rounds."""


def _correct_by_measurement(run: PruneRun, blocks: list[BlockOption], keep: dict[str, int],
                            chosen: list[str]) -> tuple[dict[str, int], list[str]]:
    """With a profile measured on this device: time the chosen pruning here and, while the measured speedup
    misses the target by more than :data:`MEASURE_TOLERANCE`, search again aiming at ``asked * target /
    measured`` (the sensitivity scan is reused), at most ``measure_rounds`` times. Returns the least pruned
    choice that measured at the target, else the fastest one; every round goes to the report."""
    from simprune.profiling import measured_speedup, profile_matches

    rounds = int(run.aopts.get("measure_rounds") or 0)
    if rounds <= 0 or not profile_matches(run.profile, run.device):  # type: ignore[arg-type]
        return keep, chosen
    goal = float(run.target_speedup)  # type: ignore[arg-type]
    asked, tried = goal, []
    try:
        for i in range(rounds + 1):
            cut = {s.name: (s.n_channels, keep.get(s.name, s.n_channels)) for s in run.specs}
            m = measured_speedup(run.work, run.example, cut, chosen, run.profile, run.device)  # type: ignore[arg-type]
            run.measured_rounds.append({"aimed_at": round(asked, 4), "measured_speedup": None if m is None
                                        else round(m, 4), "dropped_blocks": len(chosen)})
            if m is None:
                break
            tried.append((asked, m, keep, chosen))
            if abs(m / goal - 1.0) <= MEASURE_TOLERANCE or i == rounds:
                break
            asked = min(max(asked * goal / m, 1.0 + 1e-3), 4.0 * goal)
            run.target_speedup = asked
            saving, need = _budget(run, None)
            keep, chosen = budgeted_keep(run.specs, run.sensitivity, saving, need, run.round_to,
                                         float(run.aopts["min_keep_frac"]), blocks)
    except InputError as exc:  # aiming higher is out of reach: keep what was measured
        run.measured_rounds.append({"aimed_at": round(asked, 4), "error": str(exc)[:300]})
    finally:
        run.target_speedup = goal
    if not tried:
        return keep, chosen
    met = [t for t in tried if t[1] >= goal * (1.0 - MEASURE_TOLERANCE)]
    best = min(met, key=lambda t: t[0]) if met else max(tried, key=lambda t: t[1])
    run.measured_choice = best[1]
    return best[2], best[3]


def _block_ms_saving(run: PruneRun, name: str) -> float:
    return _latency_model(run).block_saving(name) if run.profile is not None else 0.0


def _block_options(run: PruneRun, scan_inputs: torch.Tensor) -> list[BlockOption]:
    """Every removable block as a knapsack choice: its drop damage (scanned) and what dropping it saves."""
    cands = removable_blocks(run.work)
    names = [b.name for b in cands]
    run.block_damage = block_damage_scan(
        run.work, names, scan_inputs, run.should_cancel,
        progress=lambda done, total: run.count("sensitivity", 0.38, 0.4, "block probes", done, total))
    _measure_block_flops(run, names)
    out = []
    for b in cands:
        saved = float(run.block_flops[b.name]) if run.profile is None else _block_ms_saving(run, b.name)
        if saved > 0:
            out.append(BlockOption(b.name, branch_groups(b, run.specs), run.block_damage[b.name], saved))
    return out


def _budget(run: PruneRun, target: float | None) -> tuple[Callable[[GroupSpec, int], float], float]:
    """What a group saves at a kept count, and the total to save: FLOPs, or predicted ms with a profile."""
    prof = run.profile
    if prof is None:
        base = run.flops_model.base  # the working model, after any explicit drops
        need = float(target) * run.before["flops"] - (run.before["flops"] - base)  # type: ignore[arg-type]
        return (lambda s, k: base - run.flops_model.flops({s.name: k})), need
    need = prof.dense_ms * (1.0 - 1.0 / float(run.target_speedup)) - sum(
        _block_ms_saving(run, n) for n in run.dropped_names)
    model = _latency_model(run)
    return (lambda s, k: model.group_saving(s.name, k)), need


def _latency_model(run: PruneRun) -> LatencyModel:
    """The run's reading of its profile (built once; FLOPs shares from the working model as it is when asked)."""
    if run.latency_model is None:
        prof = run.profile
        names = [b.name for b in removable_blocks(run.work) if b.name in prof.blocks]  # type: ignore[union-attr]
        _measure_block_flops(run, names)
        total = float(run.before["flops"])

        def group_share(name: str, kept: int) -> float | None:
            fm = run.flops_model  # rebuilt with the specs after drops; base and names cached on it
            if fm is None or name not in fm.group_names:
                return None
            return (fm.base - fm.flops({name: kept})) / total

        run.latency_model = LatencyModel(
            prof, str(run.aopts.get("latency_model") or default_latency_model(prof)),  # type: ignore[arg-type]
            group_share, lambda name: run.block_flops[name] / total if name in run.block_flops else None)
    return run.latency_model


def _predicted_speedup(run: PruneRun, keep: dict[str, int]) -> float:
    return _latency_model(run).predicted_speedup(keep, set(run.dropped_names))


def _allocate_for_latency(run: PruneRun) -> None:
    """Uniform or global counts: the smallest ratio whose predicted speedup meets the target."""
    goal = float(run.target_speedup)  # type: ignore[arg-type]
    run.chosen_ratio, run.keep_counts = min_ratio_meeting(
        lambda r: _keep_for(run, r), lambda keep: _predicted_speedup(run, keep) >= goal,
        f"target speedup {goal:g}x")


def _allocate_auto(run: PruneRun) -> None:
    """Each group's kept count chosen by the criterion itself."""
    for s in run.specs:
        k = run.crit.auto_keep(run.groups[s.name])
        if k is None:
            raise InputError(f"method '{run.crit.name}' has no automatic kept count; give a number")
        run.keep_counts[s.name] = max(1, min(s.n_channels, int(k)))
    run.chosen_ratio = "auto"


def _allocation(run: PruneRun) -> None:
    """The kept channel count of every group."""
    run.progress("allocate", 0.3)
    if run.profile is not None:  # before any drop: the groups the allocation could not price
        run.missing_groups = [s.name for s in run.specs if s.name not in run.profile.groups]
        run.missing_blocks = [n for n in run.dropped_names + [b.name for b in removable_blocks(run.work)]
                              if n not in run.profile.blocks]
    if run.allocation == "sensitivity":
        _allocate_by_sensitivity(run)
    elif run.profile is not None:
        _allocate_for_latency(run)
    elif run.pruning_ratio == "auto":
        _allocate_auto(run)
    elif run.pruning_ratio is not None:
        run.chosen_ratio = float(run.pruning_ratio)
        run.keep_counts = _keep_for(run, run.chosen_ratio)
    else:
        target = run.target_flops_reduction
        run.chosen_ratio, keep_counts = search_ratio(lambda r: _keep_for(run, r), run.flops_model,
                                                     run.before["flops"], target)
        run.keep_counts = refine_to_target(keep_counts, run.specs, run.flops_model, run.before["flops"], target,
                                           run.round_to)
    if (run.profile is not None and run.measured_choice is None  # measured here: the measurement decides
            and _predicted_speedup(run, run.keep_counts) < float(run.target_speedup) - 1e-9):
        raise InputError(f"target speedup {run.target_speedup:g}x is out of reach with this profile (its fixed "
                         f"time {run.profile.fixed_ms:g} ms of {run.profile.dense_ms:g} ms cannot be removed)")
    run.stage_done("allocate")


# --------------------------------------------------------------------------------------------------------
# 6. selection


def _select_sequentially(run: PruneRun) -> None:
    """Select, remove and re-fit one group at a time (see :mod:`simprune.pruning.sequential`)."""
    min_r2 = float(run.copts.get("min_r2", 0.0))
    n_todo = sum(1 for s in run.specs if run.keep_counts[s.name] < s.n_channels)
    run.selections = prune_sequentially(
        run.work, run.dense, run.dg, run.specs, run.keep_counts, run.crit, run.calib, run.device,
        to_group=to_channel_group,
        select=chunked_select,
        fold=(lambda g, sel: _fold_group(g, sel, min_r2)) if run.comp.get("fold") else None,
        n_images=int(run.copts.get("sequential_images", 1024)),
        lstsq_options={k: v for k, v in run.copts.items() if k in LSTSQ_OPTIONS},
        progress=lambda f: run.count("select", 0.4, 0.6, "sequential groups", round(f * n_todo), n_todo),
        should_cancel=run.should_cancel)


def _select_one_shot(run: PruneRun) -> None:
    """Every group's channels chosen on the dense model's features."""
    for i, s in enumerate(run.specs):
        if run.cancelled():
            raise JobCancelled("cancelled during channel selection")
        k = run.keep_counts[s.name]
        if k >= s.n_channels:
            continue
        g = run.groups[s.name]
        run.crit.check(g)
        run.selections[s.name] = chunked_select(run.crit, g, k, s.ch_groups)
        run.count("select", 0.4, 0.6, "groups selected", i + 1, len(run.specs))


def _selection(run: PruneRun) -> None:
    """Which channels each group keeps."""
    run.progress("select", 0.4)
    wanted = bool(run.copts.get("sequential")) and bool(run.comp.get("lstsq")) and run.dense is not None
    # a criterion scoring only each group's own weights, none changed by an earlier cut: one-shot is the same
    run.sequential_skipped = wanted and order_free(run.crit, run.specs, run.keep_counts, run.work)
    run.sequential = wanted and not run.sequential_skipped
    if run.sequential:
        _select_sequentially(run)
    else:
        _select_one_shot(run)
    run.stage_done("select")


# --------------------------------------------------------------------------------------------------------
# 7. compensation (and the cut itself)


def _fold(run: PruneRun) -> None:
    """Fold each removed channel into its merge partner in the consumers, before the cut."""
    run.progress("fold", 0.6)
    for s in run.specs:
        if s.name in run.selections and s.name in run.features:
            _fold_group(run.groups[s.name], run.selections[s.name], float(run.copts.get("min_r2", 0.0)))
    run.stage_done("fold")


def _cut(run: PruneRun) -> None:
    """Remove the unselected channels (already done group by group when sequential); record the plan."""
    run.progress("prune", 0.65)
    for s in run.specs:
        if s.name not in run.selections:
            continue
        keep = run.selections[s.name].keep.tolist()
        if not run.sequential:
            remove_channels(run.dg, s.root, keep)
        run.plan_layers.append({"layer": s.name, "channels_before": s.n_channels, "keep": keep})
    run.stage_done("prune")


def _out_channels(mod: nn.Module) -> int:
    return int(mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels)


def _least_squares(run: PruneRun) -> None:
    """Re-fit the layers after the cut to reproduce the dense model's outputs."""
    run.progress("lstsq", 0.7)
    out_keep = {m: module_keep(s, m, run.selections[s.name].keep.tolist()) for s in run.specs
                if s.name in run.selections for m, kind, _ in s.effects if kind == "out"}
    lstsq_opts = {k: v for k, v in run.copts.items() if k in LSTSQ_OPTIONS}
    pruned_specs = [s for s in run.specs if s.name in run.selections]
    anchor = first_layer_after_drops(run.work, run.example) if run.dropped else None
    if anchor is not None:  # re-fit from the first layer after a dropped block on (a name, not a group)
        mod = run.work.get_submodule(anchor)
        pruned_specs.append(GroupSpec(name=anchor, root=mod, n_channels=_out_channels(mod)))
    run.lstsq_info = reconstruct_consumers(
        run.dense, run.work, pruned_specs, run.calib, run.device, should_cancel=run.should_cancel,
        out_keep=out_keep, bn=bool(run.comp.get("bn")) and run.copts.get("bn_inline", True), **lstsq_opts)
    run.stage_done("lstsq")


def _batchnorm(run: PruneRun) -> None:
    """Re-estimate the BatchNorm statistics on the calibration data."""
    run.progress("bn", 0.85)
    reestimate_bn(run.work, iter_inputs(run.calib, run.device), run.device, run.should_cancel)
    run.stage_done("bn")


def _compensation(run: PruneRun) -> None:
    """Fold (before the cut), cut, then least squares and BatchNorm re-estimation (after it)."""
    if run.comp.get("fold") and not run.sequential:
        _fold(run)
    _cut(run)
    if run.comp.get("lstsq") and run.dense is not None:
        _least_squares(run)
    if run.comp.get("bn") and not (run.comp.get("lstsq") and run.copts.get("bn_inline", True)):
        _batchnorm(run)
    if run.comp.get("block_recon") and run.dense is not None:
        _block_reconstruction(run)
    if run.comp.get("output_recon") and run.dense is not None:
        _output_reconstruction(run)


def _block_reconstruction(run: PruneRun) -> None:
    """Fit every block of the pruned model to the dense block's output on the calibration images."""
    run.progress("block_recon", 0.9)
    run.block_recon_info = reconstruct_blocks(
        run.dense, run.work, block_units(run.work), run.calib, run.device,
        n_images=int(run.copts["block_recon_images"]),
        steps=recon_steps(run.copts, "block_recon_steps", run.before["flops"]),
        lr=float(run.copts["block_recon_lr"]), bf16=run.copts.get("recon_bf16"), should_cancel=run.should_cancel,
        progress=lambda done, total: run.count("block_recon", 0.9, 0.95, "blocks reconstructed", done, total))
    run.stage_done("block_recon")


def _output_reconstruction(run: PruneRun) -> None:
    """Fit the whole pruned model to the dense model's outputs on the calibration images (no labels)."""
    run.progress("output_recon", 0.95)
    run.output_recon_info = reconstruct_outputs(
        run.dense, run.work, run.calib, run.device, n_images=int(run.copts["output_recon_images"]),
        steps=recon_steps(run.copts, "output_recon_steps", run.before["flops"]),
        lr=output_recon_lr(run.copts, run.before["flops"]),
        temperature=float(run.copts["output_recon_temperature"]), batch_size=int(run.copts["output_recon_batch"]),
        augment=str(run.copts["output_recon_augment"]), mix=str(run.copts["output_recon_mix"]),
        keep=str(run.copts["output_recon_keep"]),
        seed=int(run.copts.get("seed", 0)), bf16=run.copts.get("recon_bf16"),
        teacher_bf16=run.copts.get("output_recon_teacher_bf16"), should_cancel=run.should_cancel,
        progress=lambda done, total: run.count("output_recon", 0.95, 0.99, "output reconstruction steps", done, total))
    run.stage_done("output_recon")


# --------------------------------------------------------------------------------------------------------
# 8. report


def _report(run: PruneRun) -> dict[str, Any]:
    """Count the pruned model, check that it runs, and assemble the report."""
    before = run.before
    after = count_model(run.work, run.example)
    run.work.eval()
    with torch.no_grad():
        run.work(run.example[:1])  # the pruned model must run
    run.timings["total_s"] = round(time.perf_counter() - run.t0, 4)
    run.progress("done", 1.0)
    sensitivity_run = run.allocation == "sensitivity"
    reduction = 1.0 - after["flops"] / before["flops"]
    warnings = []
    if run.target_flops_reduction is not None and abs(reduction - run.target_flops_reduction) > FLOPS_MISS:
        warnings.append(
            f"the pruned model has {100 * reduction:.1f}% fewer FLOPs where {100 * run.target_flops_reduction:.1f}% "
            "was planned: Torch-Pruning removed channels that the plan's groups do not account for (a coupling "
            "of this architecture it maps imperfectly); check the pruned model's accuracy before using it")
        log.warning(warnings[-1])
    return {
        "warnings": warnings,
        "method": run.crit.name,
        "method_options": {k: v for k, v in run.crit.__dict__.items() if not k.startswith("_")},
        "allocation": run.allocation,
        "allocation_options": {k: v for k, v in run.aopts.items() if k != "damage"} if sensitivity_run else {},
        "sensitivity": {g: {str(k): v for k, v in c.items()} for g, c in run.sensitivity.items()},
        "pruning_ratio": run.chosen_ratio,
        "target_flops_reduction": run.target_flops_reduction,
        "round_to": None if run.round_to is None else int(run.round_to),
        "round_to_min_channels": getattr(run.round_to, "min_channels", None),
        "compensation": run.comp,
        "compensation_options": run.copts,
        "sequential": {"ran": run.sequential, "skipped_as_order_free": run.sequential_skipped},
        "lstsq": run.lstsq_info,
        "block_recon": run.block_recon_info,
        "output_recon": run.output_recon_info,
        "flops_before": before["flops"],
        "flops_after": after["flops"],
        "params_before": before["params"],
        "params_after": after["params"],
        "flops_reduction": reduction,
        "params_reduction": 1.0 - after["params"] / before["params"],
        "per_layer": per_layer_rows(before, after),
        "skipped_groups": run.skipped,
        "selection_info": {k: v.info for k, v in run.selections.items() if v.info},
        "plan": {"layers": run.plan_layers, **({"dropped_blocks": run.dropped_names} if run.dropped else {})},
        "timings": run.timings,
        "dropped_blocks": run.dropped,
        **_depth_report(run),
        **_latency_report(run),
    }


def _depth_report(run: PruneRun) -> dict[str, Any]:
    """The scanned drop damage of every removable block, when depth was searched."""
    return {"block_sensitivity": dict(run.block_damage)} if run.aopts.get("depth") else {}


def _latency_report(run: PruneRun) -> dict[str, Any]:
    """``predicted_speedup`` and ``latency_target`` (what the profile predicts and what it lacked)."""
    prof = run.profile
    if prof is None:
        return {}
    keep = {s.name: run.keep_counts.get(s.name, s.n_channels) for s in run.specs}
    dropped = {n for n in run.dropped_names if n in prof.blocks}
    model = _latency_model(run)
    return {
        "predicted_speedup": model.predicted_speedup(keep, dropped),
        "latency_target": {
            "target_speedup": run.target_speedup,
            "dense_ms": prof.dense_ms,
            "predicted_ms": model.predict_ms(keep, dropped),
            "latency_model": {"mode": model.mode, "width_factor": model.alpha, "block_factor": model.beta},
            "profile": {"arch": prof.arch, "device_type": prof.environment.device_type,
                        "device_name": prof.environment.device_name, "batch_size": prof.batch_size,
                        "input_size": list(prof.input_size), "round_to": prof.round_to},
            "measured_rounds": run.measured_rounds,
            "measured_speedup_of_choice": run.measured_choice,
            "groups_missing_from_profile": run.missing_groups,
            "blocks_missing_from_profile": run.missing_blocks,
            "note": "groups and blocks missing from the profile are counted as saving no time",
        },
    }


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    method: str | Criterion = "l1",
    *,
    target_flops_reduction: float | None = None,
    pruning_ratio: float | str | None = None,
    calib: Any = None,
    allocation: str = "uniform",
    round_to: int | None = None,
    ignored_layers: list[str] | None = None,
    method_options: dict[str, Any] | None = None,
    compensation: dict[str, bool] | None = None,
    compensation_options: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    inplace: bool = False,
    allocation_options: dict[str, Any] | None = None,
    detail: DetailFn | None = None,
    drop_blocks: list[str] | None = None,
    target_speedup: float | None = None,
    latency_profile: DeviceProfile | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune ``model`` structurally and return ``(pruned_model, report)``.

    Exactly one of ``target_flops_reduction`` (fraction of MACs to remove, met within half a point by search
    over the ratio) and ``pruning_ratio`` (fraction of channels per group, or ``"auto"`` for the method's own
    count) is required. ``calib`` (tensor, DataLoader, or iterable of batches) enables data-driven criteria
    and compensation (``{"fold", "lstsq", "bn"}``, all on by default with data, and ``"sequential"``, off by
    default: select and re-fit group by group, see :mod:`simprune.pruning.sequential`; fine control through
    ``compensation_options``, see :data:`DEFAULT_COMPENSATION_OPTIONS`). ``ignored_layers`` defaults
    to the classifier. The report carries FLOPs/params before and after, per-layer channels, timings and the
    plan (kept indices per group, replayable with :func:`simprune.load_pruned`). ``device``: where to prune
    (checked by :func:`simprune.device.select_device`); by default where the model's parameters are.
    ``round_to`` (keep multiples of it in every group) defaults per device (:func:`default_round_to`): 8 on CUDA;
    on a CPU 16 (AVX-512) or 8 (AVX2) in groups of at least 128 channels, none elsewhere;
    ``round_to=1`` for none. The report's ``round_to`` and ``round_to_min_channels`` say what applied.

    ``allocation`` spreads the pruning over groups: ``"uniform"`` (same ratio everywhere), ``"global"``
    (layer-normalised scores ranked together) or ``"sensitivity"`` (needs ``calib``: each group is pruned
    alone at a few kept fractions, its damage on the logits measured, and the kept counts minimising the summed
    damage under the FLOPs target chosen; options in ``allocation_options``, see
    :data:`~simprune.pruning.allocation.SENSITIVITY_DEFAULTS`). A ``pruning_ratio`` with ``"sensitivity"``
    targets the FLOPs reduction that ratio gives uniformly.

    Depth: ``drop_blocks`` names residual blocks to drop whole (see
    :func:`~simprune.pruning.blocks.removable_blocks`) before the groups are allocated, with any allocation;
    ``allocation_options={"depth": True}`` with ``"sensitivity"`` scans each removable block's drop damage
    (KL on the calibration logits, dropped alone) and lets the budgeted search choose between dropping blocks
    and narrowing groups. Dropped blocks are removed before selection and compensation (least squares re-fits
    from the first layer after a dropped block on); the report lists them in ``dropped_blocks`` and the plan
    records them. Latency: ``target_speedup`` with ``latency_profile`` (a
    :class:`~simprune.profiles.DeviceProfile`, both or neither, instead of a FLOPs target or ratio) meets
    ``profile.predicted_speedup(keep, dropped) >= target_speedup``; channel counts are rounded to the
    profile's ``round_to`` unless ``round_to`` is given; the report gains ``predicted_speedup`` and
    ``latency_target``.

    ``progress(stage, fraction)`` follows the run; ``detail(stage, info)`` adds counts where a stage has them
    (groups scored, sensitivity probes, groups selected or pruned sequentially).
    """
    run = _options(model, method, target_flops_reduction=target_flops_reduction, pruning_ratio=pruning_ratio,
                   calib=calib, allocation=allocation, round_to=round_to, method_options=method_options,
                   compensation=compensation, compensation_options=compensation_options, device=device,
                   progress=progress, should_cancel=should_cancel, allocation_options=allocation_options,
                   t0=time.perf_counter(), drop_blocks=drop_blocks, target_speedup=target_speedup,
                   latency_profile=latency_profile)
    run.detail = detail
    _groups(run, model, example_inputs, inplace, ignored_layers)
    _features(run)
    _scores(run)
    _allocation(run)
    _selection(run)
    _compensation(run)
    return run.work, _report(run)
