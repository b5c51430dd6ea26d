"""``simprune.prune``: structured pruning of a model to a ratio or a FLOPs target, with a report."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from simprune.methods.base import ChannelGroup, Criterion, Selection, get_criterion
from simprune.errors import InputError, JobCancelled
from simprune.flops import count_model
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
from simprune.pruning.groups import FlopsModel, GroupSpec, discover_groups
from simprune.pruning.surgery import remove_channels

ProgressFn = Callable[[str, float], None]
FEATURE_BUDGET = 8_000_000  # floats kept per group for data-driven criteria and folding

DEFAULT_COMPENSATION = {"fold": True, "lstsq": True, "bn": True}
DEFAULT_COMPENSATION_OPTIONS: dict[str, Any] = {"layers": "all", "bn_inline": True, "min_r2": 0.0,
                                                "sequential": False, "sequential_images": 1024}
"""Fine control of compensation: ``layers`` ("consumers" | "all") re-fitted by least squares, ``bn_inline``
(re-estimate BatchNorms inside the least-squares pass instead of after it), ``min_r2`` (folding threshold),
``sequential`` (select, remove and re-fit one group at a time on the pruned model's features, see
:mod:`simprune.pruning.sequential`; needs least squares), ``sequential_images``, and
:func:`~simprune.compensation.lstsq.reconstruct_consumers`'s ``ridge``, ``max_rows``, ``max_images``."""
LSTSQ_OPTIONS = ("layers", "ridge", "max_rows", "max_images", "seed")


def iter_inputs(calib: Any, device: torch.device | None = None) -> Iterator[torch.Tensor]:
    """Input batches from a tensor, a DataLoader / iterable of tensors or of (x, y) pairs."""
    if calib is None:
        return
    if isinstance(calib, torch.Tensor):
        batches: Iterable[Any] = calib.split(64)
    else:
        batches = calib
    for b in batches:
        x = b[0] if isinstance(b, list | tuple) else b
        yield x.to(device) if device is not None else x


def first_inputs(calib: Any, n: int, device: torch.device | None = None) -> torch.Tensor:
    """The first ``n`` calibration inputs (fewer if there are fewer) as one tensor."""
    xs, have = [], 0
    for x in iter_inputs(calib, device):
        xs.append(x[: n - have])
        have += xs[-1].shape[0]
        if have >= n:
            break
    return torch.cat(xs)


def _feature_hooks(model: nn.Module, specs: list[GroupSpec], store: dict[str, list[torch.Tensor]],
                   caps: dict[str, int]) -> list[Any]:
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
    """Feature maps each group's consumer receives on the calibration data (capped per group)."""
    store: dict[str, list[torch.Tensor]] = {s.name: [] for s in specs}
    caps: dict[str, int] = {}
    hooks = _feature_hooks(model, specs, store, caps)
    was_training = model.training
    model.eval()
    try:
        for x in iter_inputs(calib, device):
            if should_cancel and should_cancel():
                raise JobCancelled("cancelled while collecting feature maps")
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {k: torch.cat(v) for k, v in store.items() if v}


def _chunked_select(crit: Criterion, group: ChannelGroup, n_keep: int, chunks: int) -> Selection:
    """Selection for groups split by grouped convs: the same positions are kept in every chunk."""
    if chunks == 1:
        return crit.select(group, n_keep)
    scores = crit.scores(group).float().view(chunks, -1).mean(0)
    per = n_keep // chunks
    pos = torch.topk(scores, per).indices.sort().values
    size = group.n_channels // chunks
    keep = torch.cat([pos + c * size for c in range(chunks)])
    return Selection(keep=keep, info={"chunked": chunks})


def _fold(group: ChannelGroup, selection: Selection, min_r2: float) -> None:
    from simprune.compensation.fold import fold_removed

    fold_removed(group, selection, min_r2=min_r2)


def _to_channel_group(spec: GroupSpec, features: dict[str, torch.Tensor]) -> ChannelGroup:
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
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune ``model`` structurally and return ``(pruned_model, report)``.

    Exactly one of ``target_flops_reduction`` (fraction of MACs to remove, met within half a point by search
    over the ratio) and ``pruning_ratio`` (fraction of channels per group, or ``"auto"`` for the method's own
    count) is required. ``calib`` (tensor, DataLoader, or iterable of batches) enables data-driven criteria
    and compensation (``{"fold", "lstsq", "bn"}``, all on by default with data, and ``"sequential"``, off by
    default: select and re-fit group by group, see :mod:`simprune.pruning.sequential`; fine control through
    ``compensation_options``, see :data:`DEFAULT_COMPENSATION_OPTIONS`). ``ignored_layers`` defaults
    to the classifier. The report carries FLOPs/params before and after, per-layer channels, timings and the
    plan (kept indices per group, replayable with :func:`simprune.load_pruned`).

    ``allocation`` spreads the pruning over groups: ``"uniform"`` (same ratio everywhere), ``"global"``
    (layer-normalised scores ranked together) or ``"sensitivity"`` (needs ``calib``: each group is pruned
    alone at a few kept fractions, its damage on the logits measured, and the kept counts minimising the summed
    damage under the FLOPs target chosen; options in ``allocation_options``, see
    :data:`~simprune.pruning.allocation.SENSITIVITY_DEFAULTS`). A ``pruning_ratio`` with ``"sensitivity"``
    targets the FLOPs reduction that ratio gives uniformly.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    report_progress = progress or (lambda stage, frac: None)

    def stage_done(name: str, start: float) -> float:
        timings[name] = round(time.perf_counter() - start, 4)
        return time.perf_counter()

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
    aopts = dict(SENSITIVITY_DEFAULTS)
    unknown = set(allocation_options or {}) - set(aopts)
    if unknown:
        raise InputError(f"unknown allocation options: {sorted(unknown)}")
    aopts.update(allocation_options or {})
    if round_to is not None and round_to < 1:
        raise InputError("round_to must be a positive integer")
    crit = method if isinstance(method, Criterion) else get_criterion(method, **(method_options or {}))
    if crit.needs_data and calib is None:
        raise InputError(f"method '{crit.name}' needs calibration data (--calib); none was given")
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
    device = torch.device(device) if isinstance(device, str) else device
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))

    work = model if inplace else copy.deepcopy(model)
    work.to(device).eval()
    dense = copy.deepcopy(work) if comp.get("lstsq") else None
    example = example_inputs.to(device)

    t = time.perf_counter()
    report_progress("analyze", 0.0)
    before = count_model(work, example)
    dg, specs, skipped = discover_groups(work, example, ignored_layers)
    if not specs:
        raise InputError("this model has no prunable channel groups (all are ignored, frozen or coupled)")
    flops_model = FlopsModel(before["per_layer"], dict(work.named_modules()), specs)
    t = stage_done("analyze", t)

    features: dict[str, torch.Tensor] = {}
    if calib is not None and (crit.needs_data or comp.get("fold")):
        report_progress("features", 0.05)
        features = collect_features(work, specs, calib, device, should_cancel)
        t = stage_done("features", t)

    report_progress("scores", 0.15)
    groups = {s.name: _to_channel_group(s, features) for s in specs}
    scores: dict[str, torch.Tensor] = {}
    if allocation == "global" or pruning_ratio is None:
        for s in specs:
            crit.check(groups[s.name])
            scores[s.name] = crit.scores(groups[s.name]).detach().float().cpu()
    t = stage_done("scores", t)

    report_progress("allocate", 0.3)
    if allocation == "global":
        keep_for = lambda r: global_keep(specs, scores, r, round_to)  # noqa: E731
    else:
        keep_for = lambda r: uniform_keep(specs, r, round_to)  # noqa: E731
    chosen_ratio: float | str | None
    sensitivity: dict[str, dict[int, float]] = {}
    if allocation == "sensitivity":
        target = target_flops_reduction
        if target is None:
            target = 1.0 - flops_model.flops(uniform_keep(specs, float(pruning_ratio), round_to)) / before["flops"]
        if aopts.get("damage"):
            sensitivity = {g: {int(k): float(v) for k, v in c.items()} for g, c in dict(aopts["damage"]).items()}
            missing = [s.name for s in specs if s.name not in sensitivity]
            if missing:
                raise InputError(f"allocation option 'damage' lacks the groups {missing[:5]}")
        else:
            scan_inputs = first_inputs(calib, int(aopts["n_images"]), device)
            for s in specs:
                crit.check(groups[s.name])

            def select_keep(spec: GroupSpec, k: int) -> torch.Tensor:
                return _chunked_select(crit, groups[spec.name], k, spec.ch_groups).keep

            sensitivity = sensitivity_scan(work, specs, scan_inputs, select_keep, tuple(aopts["fractions"]),
                                           round_to, should_cancel, local=str(aopts["local"]))
        timings["sensitivity_scan"] = round(time.perf_counter() - t, 4)
        keep_counts = sensitivity_keep(specs, sensitivity, flops_model, before["flops"], target, round_to,
                                       float(aopts["min_keep_frac"]))
        chosen_ratio = None if pruning_ratio is None else float(pruning_ratio)
    elif pruning_ratio == "auto":
        keep_counts = {}
        for s in specs:
            k = crit.auto_keep(groups[s.name])
            if k is None:
                raise InputError(f"method '{crit.name}' has no automatic kept count; give a number")
            keep_counts[s.name] = max(1, min(s.n_channels, int(k)))
        chosen_ratio = "auto"
    elif pruning_ratio is not None:
        chosen_ratio = float(pruning_ratio)
        keep_counts = keep_for(chosen_ratio)
    else:
        chosen_ratio, keep_counts = search_ratio(keep_for, flops_model, before["flops"], target_flops_reduction)
        keep_counts = refine_to_target(keep_counts, specs, flops_model, before["flops"], target_flops_reduction,
                                       round_to)
    t = stage_done("allocate", t)

    report_progress("select", 0.4)
    selections: dict[str, Selection] = {}
    sequential = bool(copts.get("sequential")) and dense is not None
    if sequential:
        from simprune.pruning.sequential import prune_sequentially

        min_r2 = float(copts.get("min_r2", 0.0))
        selections = prune_sequentially(
            work, dense, dg, specs, keep_counts, crit, calib, device,
            to_group=_to_channel_group,
            select=_chunked_select,
            fold=(lambda g, sel: _fold(g, sel, min_r2)) if comp.get("fold") else None,
            n_images=int(copts.get("sequential_images", 1024)),
            lstsq_options={k: v for k, v in copts.items() if k in LSTSQ_OPTIONS},
            progress=lambda f: report_progress("select", 0.4 + 0.3 * f), should_cancel=should_cancel)
    for i, s in enumerate([] if sequential else specs):
        if should_cancel and should_cancel():
            raise JobCancelled("cancelled during channel selection")
        k = keep_counts[s.name]
        if k >= s.n_channels:
            continue
        g = groups[s.name]
        crit.check(g)
        selections[s.name] = _chunked_select(crit, g, k, s.ch_groups)
        report_progress("select", 0.4 + 0.2 * (i + 1) / len(specs))
    t = stage_done("select", t)

    if comp.get("fold") and not sequential:
        report_progress("fold", 0.6)
        for s in specs:
            if s.name in selections and s.name in features:
                _fold(groups[s.name], selections[s.name], float(copts.get("min_r2", 0.0)))
        t = stage_done("fold", t)

    report_progress("prune", 0.65)
    plan_layers: list[dict[str, Any]] = []
    for s in specs:
        if s.name not in selections:
            continue
        keep = selections[s.name].keep.tolist()
        if not sequential:
            remove_channels(dg, s.root, keep)
        plan_layers.append({"layer": s.name, "channels_before": s.n_channels, "keep": keep})
    t = stage_done("prune", t)

    lstsq_info: dict[str, Any] = {}
    if comp.get("lstsq") and dense is not None:
        from simprune.compensation.lstsq import reconstruct_consumers

        report_progress("lstsq", 0.7)
        out_keep = {m: selections[s.name].keep.tolist() for s in specs if s.name in selections
                    for m, kind, _ in s.effects if kind == "out"}
        lstsq_opts = {k: v for k, v in copts.items() if k in LSTSQ_OPTIONS}
        lstsq_info = reconstruct_consumers(dense, work, [s for s in specs if s.name in selections], calib, device,
                                           should_cancel=should_cancel, out_keep=out_keep,
                                           bn=bool(comp.get("bn")) and copts.get("bn_inline", True), **lstsq_opts)
        t = stage_done("lstsq", t)

    if comp.get("bn") and not (comp.get("lstsq") and copts.get("bn_inline", True)):
        report_progress("bn", 0.85)
        reestimate_bn(work, iter_inputs(calib, device), device, should_cancel)
        t = stage_done("bn", t)

    after = count_model(work, example)
    work.eval()
    with torch.no_grad():
        work(example[:1])  # the pruned model must run
    timings["total_s"] = round(time.perf_counter() - t0, 4)
    report_progress("done", 1.0)

    before_by = {r["name"]: r for r in before["per_layer"]}
    per_layer = []
    for r in after["per_layer"]:
        b = before_by.get(r["name"], r)
        per_layer.append({
            "name": r["name"], "type": r["type"],
            "channels_before": b["out_channels"], "channels_after": r["out_channels"],
            "in_channels_before": b["in_channels"], "in_channels_after": r["in_channels"],
            "flops_before": b["flops"], "flops_after": r["flops"],
        })
    report = {
        "method": crit.name,
        "method_options": {k: v for k, v in crit.__dict__.items() if not k.startswith("_")},
        "allocation": allocation,
        "allocation_options": {k: v for k, v in aopts.items() if k != "damage"} if allocation == "sensitivity" else {},
        "sensitivity": {g: {str(k): v for k, v in c.items()} for g, c in sensitivity.items()},
        "pruning_ratio": chosen_ratio,
        "target_flops_reduction": target_flops_reduction,
        "round_to": round_to,
        "compensation": comp,
        "compensation_options": copts,
        "lstsq": lstsq_info,
        "flops_before": before["flops"],
        "flops_after": after["flops"],
        "params_before": before["params"],
        "params_after": after["params"],
        "flops_reduction": 1.0 - after["flops"] / before["flops"],
        "params_reduction": 1.0 - after["params"] / before["params"],
        "per_layer": per_layer,
        "skipped_groups": skipped,
        "selection_info": {k: v.info for k, v in selections.items() if v.info},
        "plan": {"layers": plan_layers},
        "timings": timings,
    }
    return work, report
