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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from simprune.compensation.fold import fold_removed
from simprune.compensation.lstsq import reconstruct_consumers
from simprune.device import select_device
from simprune.errors import InputError, JobCancelled
from simprune.flops import count_model
from simprune.methods import get_criterion
from simprune.methods.base import ChannelGroup, Criterion, Selection
from simprune.pruning.allocation import (
    SENSITIVITY_DEFAULTS,
    global_keep,
    refine_to_target,
    search_ratio,
    sensitivity_keep,
    sensitivity_scan,
    uniform_keep,
)
from simprune.pruning.batchnorm import reestimate_bn
from simprune.pruning.features import collect_features, first_inputs, iter_inputs, to_channel_group
from simprune.pruning.groups import FlopsModel, GroupSpec, discover_groups
from simprune.pruning.report import per_layer_rows
from simprune.pruning.sequential import prune_sequentially
from simprune.pruning.surgery import remove_channels

ProgressFn = Callable[[str, float], None]
DetailFn = Callable[[str, dict[str, Any]], None]
"""``detail(stage, info)``: what a stage has done, ``{"what": "groups scored", "done": 3, "total": 19}``."""

DEFAULT_COMPENSATION = {"fold": True, "lstsq": True, "bn": True}
DEFAULT_COMPENSATION_OPTIONS: dict[str, Any] = {"layers": "all", "bn_inline": True, "min_r2": 0.0,
                                                "sequential": False, "sequential_images": 1024}
"""Fine control of compensation: ``layers`` ("consumers" | "all") re-fitted by least squares, ``bn_inline``
(re-estimate BatchNorms inside the least-squares pass instead of after it), ``min_r2`` (folding threshold),
``sequential`` (select, remove and re-fit one group at a time on the pruned model's features, see
:mod:`simprune.pruning.sequential`; needs least squares), ``sequential_images``, and
:func:`~simprune.compensation.lstsq.reconstruct_consumers`'s ``ridge``, ``max_rows``, ``max_images``."""
LSTSQ_OPTIONS = ("layers", "ridge", "max_rows", "max_images", "seed")


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
    selections: dict[str, Selection] = field(default_factory=dict)
    plan_layers: list[dict[str, Any]] = field(default_factory=list)
    lstsq_info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    clock: float = 0.0
    detail: DetailFn | None = None

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


def _check_targets(target_flops_reduction: float | None, pruning_ratio: float | str | None, allocation: str,
                   calib: Any) -> None:
    if (target_flops_reduction is None) == (pruning_ratio is None):
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


def _allocation_options(allocation_options: dict[str, Any] | None) -> dict[str, Any]:
    aopts = dict(SENSITIVITY_DEFAULTS)
    unknown = set(allocation_options or {}) - set(aopts)
    if unknown:
        raise InputError(f"unknown allocation options: {sorted(unknown)}")
    aopts.update(allocation_options or {})
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
        raise InputError(f"unknown compensation switch(es) {sorted(unknown_comp)}; valid: fold, lstsq, bn, sequential")
    comp.update(given)
    if calib is None:
        comp = {k: False for k in comp}
    return comp, copts


def _options(model: nn.Module, method: str | Criterion, *, target_flops_reduction: float | None,
             pruning_ratio: float | str | None, calib: Any, allocation: str, round_to: int | None,
             method_options: dict[str, Any] | None, compensation: dict[str, bool] | None,
             compensation_options: dict[str, Any] | None, device: torch.device | str | None,
             progress: ProgressFn | None, should_cancel: Callable[[], bool] | None,
             allocation_options: dict[str, Any] | None, t0: float) -> PruneRun:
    """Validate the arguments of :func:`prune` and fill in the defaults (raises :class:`InputError`)."""
    _check_targets(target_flops_reduction, pruning_ratio, allocation, calib)
    aopts = _allocation_options(allocation_options)
    if round_to is not None and round_to < 1:
        raise InputError("round_to must be a positive integer")
    crit = _criterion(method, method_options, calib)
    comp, copts = _compensation_settings(compensation, compensation_options, calib)
    if device is None:  # where the model is
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    else:
        dev = select_device(device)
    return PruneRun(crit=crit, calib=calib, device=dev, allocation=allocation,
                    target_flops_reduction=target_flops_reduction, pruning_ratio=pruning_ratio, round_to=round_to,
                    aopts=aopts, comp=comp, copts=copts, progress=progress or (lambda stage, frac: None),
                    should_cancel=should_cancel, t0=t0)


# --------------------------------------------------------------------------------------------------------
# 2. groups, 3. features, 4. scores


def _groups(run: PruneRun, model: nn.Module, example_inputs: torch.Tensor, inplace: bool,
            ignored_layers: list[str] | None) -> None:
    """The working copy (and a dense copy for least squares), its FLOPs and its prunable groups."""
    work = model if inplace else copy.deepcopy(model)
    work.to(run.device).eval()
    run.work = work
    run.dense = copy.deepcopy(work) if run.comp.get("lstsq") else None
    run.example = example_inputs.to(run.device)

    run.clock = time.perf_counter()
    run.progress("analyze", 0.0)
    run.before = count_model(work, run.example)
    run.dg, run.specs, run.skipped = discover_groups(work, run.example, ignored_layers)
    if not run.specs:
        raise InputError("this model has no prunable channel groups (all are ignored, frozen or coupled)")
    run.flops_model = FlopsModel(run.before["per_layer"], dict(work.named_modules()), run.specs)
    run.stage_done("analyze")


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


def _scan_damage(run: PruneRun) -> dict[str, dict[int, float]]:
    scan_inputs = first_inputs(run.calib, int(run.aopts["n_images"]), run.device)
    for s in run.specs:
        run.crit.check(run.groups[s.name])

    def select_keep(spec: GroupSpec, k: int) -> torch.Tensor:
        return chunked_select(run.crit, run.groups[spec.name], k, spec.ch_groups).keep

    return sensitivity_scan(run.work, run.specs, scan_inputs, select_keep, tuple(run.aopts["fractions"]),
                            run.round_to, run.should_cancel, local=str(run.aopts["local"]),
                            progress=lambda done, total: run.count("sensitivity", 0.3, 0.4, "sensitivity probes",
                                                                   done, total))


def _allocate_by_sensitivity(run: PruneRun) -> None:
    """Kept counts minimising the summed measured damage under the FLOPs target."""
    target = run.target_flops_reduction
    if target is None:
        uniform = uniform_keep(run.specs, float(run.pruning_ratio), run.round_to)  # type: ignore[arg-type]
        target = 1.0 - run.flops_model.flops(uniform) / run.before["flops"]
    run.sensitivity = _given_damage(run) if run.aopts.get("damage") else _scan_damage(run)
    run.timings["sensitivity_scan"] = round(time.perf_counter() - run.clock, 4)
    run.keep_counts = sensitivity_keep(run.specs, run.sensitivity, run.flops_model, run.before["flops"], target,
                                       run.round_to, float(run.aopts["min_keep_frac"]))
    run.chosen_ratio = None if run.pruning_ratio is None else float(run.pruning_ratio)


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
    if run.allocation == "sensitivity":
        _allocate_by_sensitivity(run)
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
    run.sequential = bool(run.copts.get("sequential")) and run.dense is not None
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


def _least_squares(run: PruneRun) -> None:
    """Re-fit the layers after the cut to reproduce the dense model's outputs."""
    run.progress("lstsq", 0.7)
    out_keep = {m: run.selections[s.name].keep.tolist() for s in run.specs if s.name in run.selections
                for m, kind, _ in s.effects if kind == "out"}
    lstsq_opts = {k: v for k, v in run.copts.items() if k in LSTSQ_OPTIONS}
    pruned_specs = [s for s in run.specs if s.name in run.selections]
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
    return {
        "method": run.crit.name,
        "method_options": {k: v for k, v in run.crit.__dict__.items() if not k.startswith("_")},
        "allocation": run.allocation,
        "allocation_options": {k: v for k, v in run.aopts.items() if k != "damage"} if sensitivity_run else {},
        "sensitivity": {g: {str(k): v for k, v in c.items()} for g, c in run.sensitivity.items()},
        "pruning_ratio": run.chosen_ratio,
        "target_flops_reduction": run.target_flops_reduction,
        "round_to": run.round_to,
        "compensation": run.comp,
        "compensation_options": run.copts,
        "lstsq": run.lstsq_info,
        "flops_before": before["flops"],
        "flops_after": after["flops"],
        "params_before": before["params"],
        "params_after": after["params"],
        "flops_reduction": 1.0 - after["flops"] / before["flops"],
        "params_reduction": 1.0 - after["params"] / before["params"],
        "per_layer": per_layer_rows(before, after),
        "skipped_groups": run.skipped,
        "selection_info": {k: v.info for k, v in run.selections.items() if v.info},
        "plan": {"layers": run.plan_layers},
        "timings": run.timings,
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

    ``allocation`` spreads the pruning over groups: ``"uniform"`` (same ratio everywhere), ``"global"``
    (layer-normalised scores ranked together) or ``"sensitivity"`` (needs ``calib``: each group is pruned
    alone at a few kept fractions, its damage on the logits measured, and the kept counts minimising the summed
    damage under the FLOPs target chosen; options in ``allocation_options``, see
    :data:`~simprune.pruning.allocation.SENSITIVITY_DEFAULTS`). A ``pruning_ratio`` with ``"sensitivity"``
    targets the FLOPs reduction that ratio gives uniformly.

    ``progress(stage, fraction)`` follows the run; ``detail(stage, info)`` adds counts where a stage has them
    (groups scored, sensitivity probes, groups selected or pruned sequentially).
    """
    run = _options(model, method, target_flops_reduction=target_flops_reduction, pruning_ratio=pruning_ratio,
                   calib=calib, allocation=allocation, round_to=round_to, method_options=method_options,
                   compensation=compensation, compensation_options=compensation_options, device=device,
                   progress=progress, should_cancel=should_cancel, allocation_options=allocation_options,
                   t0=time.perf_counter())
    run.detail = detail
    _groups(run, model, example_inputs, inplace, ignored_layers)
    _features(run)
    _scores(run)
    _allocation(run)
    _selection(run)
    _compensation(run)
    return run.work, _report(run)
