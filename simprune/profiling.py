"""Measuring a device profile (:class:`simprune.profiles.DeviceProfile`) on this machine.

:func:`measure_profile` times, on one device at one batch size:

1. the dense model (``dense_ms``, its fastest of at least 10 rounds);
2. ``round_to``: the channel multiple that is fast here. A few representative groups (the largest plain
   convs) are rebuilt as conv -> BN -> ReLU -> consumer conv at a window of kept counts around half their
   width; each multiple ``m`` (1, 4, 8, 16) is scored by the time per kept channel averaged over the counts a
   rounding to ``m`` produces, and the smallest ``m`` within 3% of the best wins;
3. every prunable group (:func:`simprune.pruning.groups.discover_groups`) at a ladder of kept counts (25, 50,
   75% rounded to ``round_to``), the rest of the model dense. Each variant runs interleaved with the dense
   model and its time is ``dense_ms`` times the ratio of their fastest rounds (background load on a shared
   machine only adds time, so the minimum is the stable statistic, and load slowing a whole cell cancels in
   the ratio; ``dense_ms`` is the dense model's fastest round too);
   the ladder stores ``dense_ms - saving``, made non-decreasing in the kept count (:func:`monotone_ladder`).
   The savings are then scaled by one factor so that the additive prediction matches the measured model with
   every group at its middle ladder count (:func:`calibrate_groups`: single-group savings do not add up
   exactly);
4. every removable residual block (:func:`simprune.pruning.blocks.removable_blocks`) dropped alone, a negative
   saving counted as none, and the savings scaled likewise against the model with all of them dropped
   (:func:`calibrate_blocks`);
5. ``fixed_ms``: the model with every group at its minimum width and every removable block dropped;
6. checks: a few random prunings (ladder counts, some blocks dropped) measured against the profile's
   additive prediction (:meth:`DeviceProfile.predict_ms`).

A variant is built without re-tracing the model: the dense copy's dependency graph gives the coupled
layers of a group once, and their pruning functions are replayed on a copy. The time budget is split over the
phases; when the groups would not fit their share at the full ladder, the ladder shrinks (at least the 50%
point) and groups still left over are named in the result.

:func:`worker_profile` measures once per (device, threads, architecture, input size, batch) and caches the
JSON file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simprune.latency import device_name, onnxruntime_version, sync, time_interleaved, torch_threads
from simprune.profiles import MAX_LADDER, BlockLatency, DeviceProfile, GroupLatency, ProfileEnvironment

LADDER = (0.25, 0.5, 0.75)
ROUND_CANDIDATES = (1, 4, 8, 16)
ROUND_TOLERANCE = 0.03
BUDGET_SHARES = {"round_to": 0.1, "groups": 0.6, "blocks": 0.15}
"""Shares of the time left when each phase starts (the fixed-cost variant and the checks take the rest)."""
PROFILE_CACHE_ENV = "SIMPRUNE_PROFILE_CACHE"
PROFILE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WORKER_CUDA_BATCH = 32
"""Batch size of a worker profile measured on CUDA (batch 1 on CPU)."""

ProgressFn = Callable[[str, float], None]


@dataclass
class ProfileSettings:
    """How to measure a profile. ``round_candidates`` empty: no ``round_to`` measurement (None)."""

    batch_size: int = 1
    ladder: tuple[float, ...] = LADDER
    round_candidates: tuple[int, ...] = ROUND_CANDIDATES
    warmup: int = 1
    repeats: int = 60
    budget_s: float = 300.0
    threads: int | None = None
    checks: int = 2
    seed: int = 0
    calibrate: bool = True
    dtype: str = "float32"
    """Precision of the timed models: ``float32``, ``bfloat16`` or ``float16`` (time what will be deployed)."""
    channels_last: bool = False
    """Time the models and inputs in channels_last memory format (the usual layout for bf16 convs on GPUs)."""

    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a torch dtype; a clear error for anything else."""
        if self.dtype not in PROFILE_DTYPES:
            raise ValueError(f"profile dtype {self.dtype!r}: use one of {', '.join(PROFILE_DTYPES)}")
        return PROFILE_DTYPES[self.dtype]

    def place(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` on ``device``, in this profile's dtype and memory format, in eval mode."""
        module = module.to(device, dtype=self.torch_dtype())
        return (module.to(memory_format=torch.channels_last) if self.channels_last else module).eval()

    def place_input(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """An input tensor as :meth:`place` puts the models."""
        x = x.to(device, dtype=self.torch_dtype())
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


@dataclass
class ProfileResult:
    """A measured profile, its prediction checks and what did not fit the budget."""

    profile: DeviceProfile
    checks: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    round_scores: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    calibration: dict[str, float | None] = field(default_factory=dict)
    """The factors applied to the groups' and the blocks' savings (:func:`calibrate_groups`,
    :func:`calibrate_blocks`), None where not calibrated."""


@dataclass
class _Bench:
    """The dense model, its traced copy and groups, and the clock of one profile measurement."""

    base: nn.Module
    dense: nn.Module
    dg: Any
    specs: list[Any]
    device: torch.device
    example: torch.Tensor
    x: torch.Tensor
    settings: ProfileSettings
    deadline: float
    progress: ProgressFn
    dense_ms: float = 0.0
    fn_cache: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def place(self, module: nn.Module) -> nn.Module:
        """``module`` on the profile's device, in its dtype and memory format, in eval mode."""
        return self.settings.place(module, self.device)

    def place_input(self, x: torch.Tensor) -> torch.Tensor:
        """An input tensor as :meth:`place` puts the models."""
        return self.settings.place_input(x, self.device)

    def saving_ms(self, variant: nn.Module, budget_s: float) -> float | None:
        """Time the variant saves (ms): ``dense_ms * (1 - fastest variant round / fastest dense round)``, the two
        timed interleaved over the same rounds, so that load slowing the whole cell cancels in the ratio; None
        when it does not fit."""
        variant = self.place(variant)
        with torch.inference_mode():
            times, why = time_interleaved([lambda: self.dense(self.x), lambda: variant(self.x)], self.device,
                                          self.settings.warmup, self.settings.repeats, budget_s)
        if why:
            return None
        return self.dense_ms * (1.0 - min(times[1]) / min(times[0]))


# --------------------------------------------------------------------------------------------------------
# building variants


def _plain(idxs: Sequence[Any]) -> list[int]:
    return [int(getattr(i, "idx", i)) for i in idxs]


def prune_group_copy(base: nn.Module, dg: Any, spec: Any, keep: int, example: torch.Tensor) -> nn.Module:
    """A copy of ``base`` with only group ``spec`` cut to its first ``keep`` channels.

    The coupled layers come from ``dg`` (traced on ``base``) and their Torch-Pruning handlers are replayed on
    the copy's modules of the same names; a group with an unwrapped parameter, or a failed replay, is cut on
    a freshly traced copy instead.
    """
    from simprune.pruning.surgery import _out_fn, apply_plan

    variant = copy.deepcopy(base)
    modules = dict(variant.named_modules())
    removed = list(range(keep, spec.n_channels))
    try:
        group = dg.get_pruning_group(spec.root, _out_fn(spec.root), removed)
        for item in group:
            dep = item.dep
            name = dg._module2name.get(dep.target.module)  # noqa: SLF001 (Torch-Pruning keeps it private)
            if name is None:
                if isinstance(dep.target.module, nn.Parameter):
                    raise TypeError("unwrapped parameter")
                continue
            if name not in modules:
                continue
            dep.handler.__self__.pruning_dim = dep.target.pruning_dim
            dep.handler(modules[name], _plain(item.idxs))
        return variant
    except Exception:  # replay not possible for this group: trace the copy and cut it there
        variant = copy.deepcopy(base)
        layers = [{"layer": spec.name, "channels_before": spec.n_channels, "keep": list(range(keep))}]
        return apply_plan(variant, example, layers)


def pruned_copy(base: nn.Module, example: torch.Tensor, keep: dict[str, tuple[int, int]],
                dropped: Sequence[str] = ()) -> nn.Module:
    """A copy of ``base`` with several groups cut (``keep``: name -> (channels before, kept)) and the blocks
    ``dropped`` removed, through simprune's own surgery (:func:`~simprune.pruning.surgery.apply_plan`)."""
    from simprune.pruning.surgery import apply_plan

    variant = copy.deepcopy(base)
    layers = [{"layer": g, "channels_before": n, "keep": list(range(k))} for g, (n, k) in keep.items() if k < n]
    apply_plan(variant, example, layers)
    if dropped:
        from simprune.pruning.blocks import drop_blocks

        drop_blocks(variant, dropped)
    return variant


def profile_matches(profile: DeviceProfile, device: torch.device, threads: int | None = None) -> bool:
    """Whether ``profile`` was measured on ``device`` as it runs now (same device type and name; on CPU the same
    thread count, ``threads`` or torch's current one): only then can a pruning choice be measured here against the
    profile's prediction."""
    env = profile.environment
    threads = threads or torch.get_num_threads()
    return (env.device_type == device.type and env.device_name == device_name(device)[:200]
            and (device.type != "cpu" or env.threads == threads))


def measured_speedup(base: nn.Module, example: torch.Tensor, keep: dict[str, tuple[int, int]], dropped: Sequence[str],
                     profile: DeviceProfile, device: torch.device, budget_s: float = 10.0) -> float | None:
    """``base`` against a copy cut to ``keep`` (name -> (channels, kept)) with the blocks ``dropped`` removed,
    timed interleaved on ``device`` at the profile's batch, dtype and layout: the ratio of their fastest rounds
    (None when even a few rounds do not fit ``budget_s``)."""
    settings = ProfileSettings(batch_size=profile.batch_size, dtype=profile.environment.dtype,
                               channels_last=profile.environment.channels_last, repeats=30)
    variant = settings.place(pruned_copy(base, example, keep, dropped), device)
    dense = settings.place(copy.deepcopy(base), device)
    x = settings.place_input(torch.randn(profile.batch_size, *example.shape[1:]), device)
    with torch.inference_mode():
        times, why = time_interleaved([lambda: dense(x), lambda: variant(x)], device, 2, settings.repeats, budget_s)
    return None if why else min(times[0]) / min(times[1])


def _blocks(model: nn.Module) -> list[Any]:
    """The removable residual blocks (none when this build has no depth pruning)."""
    try:
        from simprune.pruning.blocks import removable_blocks
    except ImportError:
        return []
    return removable_blocks(model)


# --------------------------------------------------------------------------------------------------------
# round_to


def _class_weights(candidates: Sequence[int]) -> dict[int, dict[int, float]]:
    """For each multiple m: the share of multiples of m whose largest dividing candidate is each candidate."""
    cands = sorted(set(candidates))
    span = math.lcm(*cands)
    out: dict[int, dict[int, float]] = {}
    for m in cands:
        ks = range(m, span + 1, m)
        counts: dict[int, float] = {}
        for k in ks:
            c = max(c for c in cands if k % c == 0)
            counts[c] = counts.get(c, 0.0) + 1.0
        out[m] = {c: v / len(ks) for c, v in counts.items()}
    return out


def _micro(spec: Any, k: int, in_shape: tuple[int, ...]) -> nn.Module:
    """The group at ``k`` channels as a small model: its root conv, BN, ReLU and first consumer conv."""
    root = spec.root
    layers: list[nn.Module] = [nn.Conv2d(in_shape[1], k, root.kernel_size, root.stride, root.padding,
                                         root.dilation, bias=root.bias is not None), nn.BatchNorm2d(k), nn.ReLU()]
    consumer = next((c.module for c in spec.consumers if isinstance(c.module, nn.Conv2d)), None)
    if consumer is not None:
        layers.append(nn.Conv2d(k, consumer.out_channels, consumer.kernel_size, consumer.stride, consumer.padding,
                                consumer.dilation, bias=consumer.bias is not None))
    return nn.Sequential(*layers).eval()


def _representative(bench: _Bench, n: int = 3) -> list[tuple[Any, tuple[int, ...]]]:
    """Up to ``n`` plain conv groups with the most MACs at distinct shapes, with their root's input shape."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, inp: Any, out: Any) -> None:
            shapes.setdefault(name, (tuple(inp[0].shape), tuple(out.shape)))

        return hook

    hooks = [s.root.register_forward_hook(record(s.name)) for s in bench.specs if isinstance(s.root, nn.Conv2d)]
    try:
        with torch.inference_mode():
            bench.base(torch.zeros(bench.settings.batch_size, *bench.x.shape[1:]))
    finally:
        for h in hooks:
            h.remove()
    plain = [s for s in bench.specs if s.name in shapes and s.ch_groups == 1 and s.root.groups == 1
             and s.n_channels >= 32]
    macs = {s.name: math.prod(shapes[s.name][1]) * s.root.in_channels * math.prod(s.root.kernel_size) for s in plain}
    chosen, seen = [], set()
    for s in sorted(plain, key=lambda s: -macs[s.name]):
        key = (shapes[s.name][0][1:], s.n_channels)
        if key not in seen:
            seen.add(key)
            chosen.append((s, shapes[s.name][0]))
        if len(chosen) == n:
            break
    return chosen


def measure_round_to(bench: _Bench, budget_s: float) -> tuple[int | None, dict[int, float]]:
    """The fastest channel multiple among the candidates (see the module docstring) and each one's score
    (time per kept channel relative to the best; 1.0 is the best)."""
    cands = sorted(set(bench.settings.round_candidates))
    layers = _representative(bench)
    if len(cands) < 2 or not layers:
        return (cands[0] if cands else None), {}
    top = cands[-1]
    weights = _class_weights(cands)
    per_class: dict[int, list[float]] = {c: [] for c in cands}
    deadline = time.perf_counter() + budget_s
    for i, (spec, in_shape) in enumerate(layers):
        centre = max(2 * top, (spec.n_channels // 2) // top * top)
        counts = sorted({k for k in range(centre - top, centre + top + 1) if 0 < k <= spec.n_channels})
        models = [bench.place(_micro(spec, k, in_shape)) for k in counts]
        x = bench.place_input(torch.randn(*in_shape))
        share = max(0.0, deadline - time.perf_counter()) / (len(layers) - i)
        with torch.inference_mode():
            times, why = time_interleaved([lambda m=m, x=x: m(x) for m in models], bench.device, 1,
                                          bench.settings.repeats, share)
        if why:
            continue
        per_ch = [min(t) / k for t, k in zip(times, counts, strict=True)]
        ref = statistics.median(per_ch)
        for k, v in zip(counts, per_ch, strict=True):
            per_class[max(c for c in cands if k % c == 0)].append(v / ref)
    means = {c: statistics.mean(v) for c, v in per_class.items() if v}
    if len(means) < len(cands):
        return None, {}
    scores = {m: sum(w * means[c] for c, w in weights[m].items()) for m in cands}
    best = min(scores.values())
    chosen = min(m for m in cands if scores[m] <= best * (1 + ROUND_TOLERANCE))
    return chosen, {m: round(s / best, 4) for m, s in scores.items()}


# --------------------------------------------------------------------------------------------------------
# groups, blocks, fixed cost, checks


def ladder_counts(n: int, ch_groups: int, round_to: int | None, fractions: Sequence[float]) -> list[int]:
    """Kept counts for the ladder: each fraction of ``n`` rounded to ``ch_groups * round_to`` (unrounded when
    that leaves no count below ``n``), distinct, ascending, below ``n``."""
    for step in (ch_groups * (round_to or 1), ch_groups):
        ks = sorted({min(n, max(step, round(f * n / step) * step)) for f in fractions} - {n})
        if ks:
            return ks[:MAX_LADDER]
    return []


def monotone_ladder(ladder: list[tuple[int, float]], dense_ms: float) -> list[tuple[int, float]]:
    """The ladder made non-decreasing in the kept count and capped at ``dense_ms`` (pool-adjacent-violators
    on ``(k, ms)`` with the full width at ``dense_ms``): at rounded counts fewer channels are not slower, so an
    inversion is measurement noise, and averaging it out steadies the prediction."""
    pools: list[tuple[float, int]] = []  # (mean, size)
    for v in [ms for _, ms in sorted(ladder)] + [dense_ms]:
        pools.append((v, 1))
        while len(pools) > 1 and pools[-2][0] > pools[-1][0]:
            (v2, n2), (v1, n1) = pools.pop(), pools.pop()
            pools.append(((v1 * n1 + v2 * n2) / (n1 + n2), n1 + n2))
    fitted = [v for v, n in pools for _ in range(n)]
    return [(k, round(min(ms, dense_ms), 5)) for (k, _), ms in zip(sorted(ladder), fitted, strict=False)]


def _measure_groups(bench: _Bench, round_to: int | None, skipped: list[dict[str, str]]) -> dict[str, GroupLatency]:
    """Each group's ladder; the ladder shrinks to the 50% point when the full one would not fit."""
    share = bench.left() * BUDGET_SHARES["groups"]
    deadline = time.perf_counter() + share
    fractions = tuple(bench.settings.ladder)
    out: dict[str, GroupLatency] = {}
    n = len(bench.specs)
    for i, spec in enumerate(bench.specs):
        bench.progress("groups", i / max(n, 1))
        ladder = []
        for k in ladder_counts(spec.n_channels, spec.ch_groups, round_to, fractions):
            left = max(0.0, deadline - time.perf_counter())
            variants_left = len(fractions) * (n - i)
            variant = prune_group_copy(bench.base, bench.dg, spec, k, bench.example)
            saving = bench.saving_ms(variant, left / max(variants_left, 1))
            if saving is not None:
                ladder.append((k, round(max(bench.dense_ms - saving, 0.0), 5)))
        if ladder:
            out[spec.name] = GroupLatency(channels=spec.n_channels, ladder=monotone_ladder(ladder, bench.dense_ms))
        else:
            skipped.append({"what": "group", "name": spec.name, "reason": "over the time budget"})
        if i == 0 and len(fractions) > 1:  # price one group: shrink the ladder when all would not fit
            spent = share - max(0.0, deadline - time.perf_counter())
            if spent * n > share:
                fractions = (0.5,)
    return out


def _measure_blocks(bench: _Bench, blocks: list[Any], skipped: list[dict[str, str]]) -> dict[str, BlockLatency]:
    deadline = time.perf_counter() + bench.left() * BUDGET_SHARES["blocks"]
    out: dict[str, BlockLatency] = {}
    for i, block in enumerate(blocks):
        bench.progress("blocks", i / max(len(blocks), 1))
        from simprune.pruning.blocks import drop_blocks

        variant = drop_blocks(copy.deepcopy(bench.base), [block.name])
        saving = bench.saving_ms(variant, max(0.0, deadline - time.perf_counter()) / (len(blocks) - i))
        if saving is None:
            skipped.append({"what": "block", "name": block.name, "reason": "over the time budget"})
            continue
        # dropping a branch does not make the model slower: a negative saving is noise, counted as none
        ms = min(max(bench.dense_ms - saving, 0.0), bench.dense_ms)
        out[block.name] = BlockLatency(ms=round(ms, 5), groups=list(block.groups)[:64])
    return out


def _measure_fixed(bench: _Bench, blocks: list[Any], round_to: int | None) -> float:
    """The model at every group's minimum width with every removable block dropped (0 when it does not fit)."""
    keep = {s.name: (s.n_channels, min(s.n_channels, s.min_keep(round_to))) for s in bench.specs}
    variant = pruned_copy(bench.base, bench.example, keep, [b.name for b in blocks])
    floor_s = 10 * bench.dense_ms / 1e3 + 0.5  # a few rounds even when the phases before overran: it is the floor
    saving = bench.saving_ms(variant, max(bench.left() * 0.3, floor_s))
    return 0.0 if saving is None else round(min(max(bench.dense_ms - saving, 0.0), bench.dense_ms), 5)


def _random_choice(profile: DeviceProfile, rng: random.Random) -> tuple[dict[str, int], list[str]]:
    dropped = [b for b in sorted(profile.blocks) if rng.random() < 0.25]
    keep = {g: rng.choice([gl.channels] + [k for k, _ in gl.ladder]) for g, gl in profile.groups.items()}
    return keep, dropped


def calibrate_groups(bench: _Bench, groups: dict[str, GroupLatency]) -> tuple[dict[str, GroupLatency], float | None]:
    """Scale every group's saving by one factor so that the additive prediction matches the measured time of the
    model with every group at its middle ladder count (single-group savings do not add up exactly: shared
    overheads, caches, noise). Returns the scaled groups and the factor (None when it could not be measured)."""
    mid = {g: gl.ladder[len(gl.ladder) // 2][0] for g, gl in groups.items()}
    predicted = sum(gl.saving(bench.dense_ms, mid[g]) for g, gl in groups.items())
    if predicted <= 0:
        return groups, None
    channels = {s.name: s.n_channels for s in bench.specs}
    variant = pruned_copy(bench.base, bench.example, {g: (channels[g], k) for g, k in mid.items()})
    saving = bench.saving_ms(variant, max(bench.left() * 0.2, 10 * bench.dense_ms / 1e3 + 0.5))
    if saving is None:
        return groups, None
    factor = min(max(saving / predicted, 0.1), 3.0)
    scaled = {g: GroupLatency(channels=gl.channels, ladder=[
        (k, round(min(max(bench.dense_ms - factor * (bench.dense_ms - ms), 0.0), bench.dense_ms), 5))
        for k, ms in gl.ladder]) for g, gl in groups.items()}
    return scaled, round(factor, 4)


def calibrate_blocks(bench: _Bench, blocks: dict[str, BlockLatency]) -> tuple[dict[str, BlockLatency], float | None]:
    """The same for the blocks: one factor so that the summed savings match the model with every measured block
    dropped (capped so that the prediction stays above zero)."""
    predicted = sum(bench.dense_ms - b.ms for b in blocks.values())
    if predicted <= 0 or len(blocks) < 2:
        return blocks, None
    from simprune.pruning.blocks import drop_blocks

    variant = drop_blocks(copy.deepcopy(bench.base), list(blocks))
    saving = bench.saving_ms(variant, max(bench.left() * 0.2, 10 * bench.dense_ms / 1e3 + 0.5))
    if saving is None:
        return blocks, None
    factor = min(max(saving / predicted, 0.1), 3.0, bench.dense_ms / predicted)
    scaled = {n: BlockLatency(ms=round(min(max(bench.dense_ms - factor * (bench.dense_ms - b.ms), 0.0),
                                             bench.dense_ms), 5), groups=b.groups) for n, b in blocks.items()}
    return scaled, round(factor, 4)


def _checks(bench: _Bench, profile: DeviceProfile) -> list[dict[str, Any]]:
    """Random prunings measured against the profile's additive prediction."""
    rng = random.Random(bench.settings.seed)
    out = []
    channels = {s.name: s.n_channels for s in bench.specs}
    for i in range(bench.settings.checks):
        bench.progress("checks", i / max(bench.settings.checks, 1))
        keep, dropped = _random_choice(profile, rng)
        variant = pruned_copy(bench.base, bench.example, {g: (channels[g], k) for g, k in keep.items()}, dropped)
        saving = bench.saving_ms(variant, bench.left() / (bench.settings.checks - i))
        if saving is None:
            break
        predicted = profile.predict_ms(keep, set(dropped))
        measured = max(bench.dense_ms - saving, 1e-6)
        out.append({"groups_pruned": sum(1 for g, k in keep.items() if k < channels[g]),
                    "blocks_dropped": len(dropped), "predicted_ms": round(predicted, 4),
                    "measured_ms": round(measured, 4), "predicted_speedup": round(profile.dense_ms / predicted, 4),
                    "measured_speedup": round(profile.dense_ms / measured, 4),
                    "error": round(predicted / measured - 1.0, 4)})
    return out


# --------------------------------------------------------------------------------------------------------
# the measurement


def _setup(model: nn.Module, input_size: Sequence[int], device: torch.device, settings: ProfileSettings,
           progress: ProgressFn) -> _Bench:
    from simprune.pruning.groups import discover_groups

    base = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(1, *input_size)
    dg, specs, _ = discover_groups(base, example)
    bench = _Bench(base=base, dense=base, dg=dg, specs=specs, device=device, example=example, x=example,
                   settings=settings, deadline=time.perf_counter() + settings.budget_s, progress=progress)
    bench.dense = bench.place(copy.deepcopy(base))
    bench.x = bench.place_input(torch.randn(settings.batch_size, *input_size))
    return bench


def _dense_ms(bench: _Bench) -> float:
    with torch.inference_mode():
        times, why = time_interleaved([lambda: bench.dense(bench.x)], bench.device, max(2, bench.settings.warmup),
                                      max(bench.settings.repeats, 10), max(bench.left() * 0.05, 1.0))
        if why:  # one forward is longer than the budget allows: a single timed run
            t0 = time.perf_counter()
            bench.dense(bench.x)
            sync(bench.device)
            return (time.perf_counter() - t0) * 1e3
    return min(times[0]) * 1e3


_STAGES = {"setup": (0.0, 0.02), "dense": (0.02, 0.05), "round_to": (0.05, 0.1), "groups": (0.1, 0.7),
           "blocks": (0.7, 0.85), "fixed": (0.85, 0.9), "checks": (0.9, 1.0)}


def _guarded(skipped: list[dict[str, str]], what: str, fn: Callable[[], Any], default: Any) -> Any:
    """``fn()``, or ``default`` with the failure recorded in ``skipped``: a variant of several cuts that this
    architecture's surgery cannot build leaves the rest of the profile standing."""
    try:
        return fn()
    except Exception as exc:
        skipped.append({"what": what, "name": what, "reason": f"{type(exc).__name__}: {exc}"[:300]})
        return default


def measure_profile(model: nn.Module, arch: str, input_size: Sequence[int], device: torch.device | str,
                    settings: ProfileSettings | None = None, progress: ProgressFn | None = None) -> ProfileResult:
    """Measure ``model``'s :class:`DeviceProfile` on ``device`` (see the module docstring).

    ``input_size`` is one sample's shape (C, H, W); the weights do not matter (timing only). ``progress(stage,
    fraction)`` follows the phases (fraction of the whole measurement)."""
    settings = settings or ProfileSettings()
    settings.torch_dtype()  # an unknown dtype fails before any work
    device = torch.device(device)
    notify = progress or (lambda stage, frac: None)

    def at(stage: str, frac: float) -> None:
        lo, hi = _STAGES[stage]
        notify(stage, lo + (hi - lo) * min(max(frac, 0.0), 1.0))

    t0 = time.perf_counter()
    skipped: list[dict[str, str]] = []
    with torch_threads(settings.threads if device.type == "cpu" else None) as threads:
        at("setup", 0.0)
        bench = _setup(model, input_size, device, settings, at)
        at("dense", 0.0)
        bench.dense_ms = _dense_ms(bench)
        at("round_to", 0.0)
        round_to, scores = measure_round_to(bench, bench.left() * BUDGET_SHARES["round_to"])
        groups = _measure_groups(bench, round_to, skipped)
        factor = None
        if settings.calibrate and groups:  # when the all-groups variant cannot be built, savings stay as measured
            groups, factor = _guarded(skipped, "calibration", lambda: calibrate_groups(bench, groups), (groups, None))
        blocks = _blocks(bench.base)
        block_lat = _measure_blocks(bench, blocks, skipped) if blocks else {}
        block_factor = None
        if settings.calibrate and block_lat:
            block_lat, block_factor = _guarded(skipped, "calibration", lambda: calibrate_blocks(bench, block_lat),
                                               (block_lat, None))
        at("fixed", 0.0)
        kept_blocks = [b for b in blocks if b.name in block_lat]
        fixed = _guarded(skipped, "fixed_ms", lambda: _measure_fixed(bench, kept_blocks, round_to), 0.0)
        env = ProfileEnvironment(device_type="cuda" if device.type == "cuda" else "cpu",
                                 device_name=device_name(device)[:200],
                                 threads=threads if device.type == "cpu" else None, torch=torch.__version__,
                                 onnxruntime=onnxruntime_version(), platform=_platform(), dtype=settings.dtype,
                                 channels_last=settings.channels_last)
        profile = DeviceProfile(
            arch=arch, input_size=tuple(int(v) for v in input_size), batch_size=settings.batch_size,
            environment=env, created=datetime.now(timezone.utc), dense_ms=round(bench.dense_ms, 5),
            fixed_ms=fixed, round_to=round_to, groups=groups, blocks=block_lat)
        checks = _guarded(skipped, "checks", lambda: _checks(bench, profile), []) if settings.checks else []
    at("checks", 1.0)
    return ProfileResult(profile=profile, checks=checks, skipped=skipped, round_scores=scores,
                         seconds=round(time.perf_counter() - t0, 3),
                         calibration={"groups": factor, "blocks": block_factor})


def _platform() -> str:
    import platform

    return platform.platform(terse=True)[:200]


# --------------------------------------------------------------------------------------------------------
# the worker's cached profile


def default_cache_dir() -> Path:
    """``$SIMPRUNE_PROFILE_CACHE``, else ``~/.cache/simprune/profiles``."""
    env = os.environ.get(PROFILE_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "simprune" / "profiles"


def cache_key(arch: str, input_size: Sequence[int], batch_size: int, device: torch.device | str,
              threads: int | None) -> str:
    """The cache file name of a worker profile: a hash of the device name, threads, arch, input size, batch."""
    device = torch.device(device)
    ident = {"device": device_name(device), "type": device.type, "threads": threads if device.type == "cpu" else None,
             "arch": arch, "input_size": [int(v) for v in input_size], "batch": int(batch_size)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24] + ".json"


def worker_profile(arch: str, model: nn.Module, example: torch.Tensor, device: torch.device | str,
                   cache_dir: Path | str | None = None, *, batch_size: int | None = None,
                   settings: ProfileSettings | None = None) -> DeviceProfile:
    """The profile of ``arch`` on this worker's ``device``: read from ``cache_dir`` (default
    :func:`default_cache_dir`), else measured (batch 1 on CPU, :data:`WORKER_CUDA_BATCH` on CUDA, unless
    given) and cached."""
    from simprune.errors import InputError
    from simprune.profiles import load_profile, save_profile

    device = torch.device(device)
    if settings is None:
        settings = ProfileSettings(batch_size=WORKER_CUDA_BATCH if device.type == "cuda" else 1)
    settings = copy.copy(settings)
    settings.batch_size = batch_size or settings.batch_size
    input_size = tuple(int(v) for v in example.shape[1:])
    threads = (settings.threads or torch.get_num_threads()) if device.type == "cpu" else None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / cache_key(arch, input_size, settings.batch_size, device, threads)
    if path.is_file():
        try:
            return load_profile(path)
        except InputError:  # a damaged or outdated cache entry: measure again
            path.unlink(missing_ok=True)
    profile = measure_profile(model, arch, input_size, device, settings).profile
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_profile(profile, tmp)
    os.replace(tmp, path)
    return profile
