"""What a pruning choice saves in time on a profiled device, as the latency-targeted search sees it.

Two models over one :class:`~simprune.profiles.DeviceProfile`:

* ``measured``: each group's ladder and each block's drop as the profile measured them, a group's saving capped
  at :data:`GROUP_SAVING_CAP` times its FLOPs share of the dense time.
* ``pooled``: one factor for narrowing and one for dropping blocks, fitted to the profile's measurements as a
  whole: a group saves ``alpha * (its FLOPs share) * dense_ms``, a block ``beta * (its FLOPs share) *
  dense_ms``. On a CPU at batch 1 each single measurement is a small difference of two noisy whole-model times
  (CIFAR ResNet-56, 2 threads, 11.7 ms dense: single-group savings of 0 to 0.6 ms where the FLOPs share is
  about 0.2 ms, 10 of 26 blocks measured as saving nothing), and a search over them picks the groups and blocks
  whose noise overstated them (a predicted 10.4x measured 1.5x). Their sums are steady (the profile calibrates
  them against one model with every group cut and one with every block dropped), so the pooled factors keep
  what the device says about narrowing against dropping while the search ranks by FLOPs within each kind.

The default is ``pooled`` for CPU profiles and ``measured`` for CUDA ones (large batches time precisely there,
and per-group differences such as channel multiples are real). A job chooses with the allocation option
``latency_model``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from simprune.errors import InputError
from simprune.profiles import DeviceProfile

LATENCY_MODELS: tuple[str, ...] = ("pooled", "measured")

GROUP_SAVING_CAP = 2.0
"""``measured``: narrowing a group saves at most this many times its share of the model's FLOPs in time (of the
profile's dense time). A single-group saving is a small difference of two measured times; on a loaded CPU one
lucky round made a 16-channel conv of ResNet-56 "save" 25% of the model, and the search chose it first. Dropping
a block (which also removes per-layer overhead) is not capped."""


def default_latency_model(profile: DeviceProfile) -> str:
    """``pooled`` for a CPU profile, ``measured`` for any other device."""
    return "pooled" if profile.environment.device_type == "cpu" else "measured"


@dataclass
class LatencyModel:
    """Savings in ms of the profile's dense time, for groups at a kept count and for dropped blocks.

    ``group_share(name, kept)`` and ``block_share(name)`` give the fraction of the dense model's FLOPs that a cut
    removes (None when unknown, e.g. a block of the original model already gone)."""

    profile: DeviceProfile
    mode: str
    group_share: Callable[[str, int], float | None]
    block_share: Callable[[str], float | None]
    alpha: float | None = None
    beta: float | None = None
    _fitted: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in LATENCY_MODELS:
            raise InputError(f"latency_model must be one of {', '.join(LATENCY_MODELS)}, not {self.mode!r}")

    def fit(self) -> None:
        """The pooled factors: measured savings over FLOPs-proportional ones, summed over the profile's groups
        (each at its middle ladder count) and over its blocks."""
        if self._fitted:
            return
        self._fitted = True
        prof = self.profile
        meas, prop = 0.0, 0.0
        for name, gl in prof.groups.items():
            if not gl.ladder:
                continue
            k = gl.ladder[len(gl.ladder) // 2][0]
            share = self.group_share(name, k)
            if share is not None and share > 0:
                meas += gl.saving(prof.dense_ms, k)
                prop += share * prof.dense_ms
        self.alpha = max(meas / prop, 0.0) if prop > 0 else None
        meas, prop = 0.0, 0.0
        for name, b in prof.blocks.items():
            share = self.block_share(name)
            if share is not None and share > 0:
                meas += prof.dense_ms - b.ms
                prop += share * prof.dense_ms
        self.beta = max(meas / prop, 0.0) if prop > 0 else None

    def group_saving(self, name: str, kept: int) -> float:
        """ms saved with group ``name`` at ``kept`` channels (0 for a group the profile lacks)."""
        prof = self.profile
        if name not in prof.groups:
            return 0.0
        share = self.group_share(name, kept) or 0.0
        if self.mode == "pooled":
            self.fit()
            if self.alpha is not None:
                return self.alpha * share * prof.dense_ms
        return min(prof.groups[name].saving(prof.dense_ms, kept), GROUP_SAVING_CAP * share * prof.dense_ms)

    def block_saving(self, name: str) -> float:
        """ms saved by dropping block ``name`` (0 for a block the profile lacks)."""
        prof = self.profile
        if name not in prof.blocks:
            return 0.0
        if self.mode == "pooled":
            self.fit()
            share = self.block_share(name)
            if self.beta is not None and share is not None:
                return self.beta * share * prof.dense_ms
        return prof.dense_ms - prof.blocks[name].ms

    def predict_ms(self, keep: dict[str, int], dropped: set[str] | frozenset[str] = frozenset()) -> float:
        """Predicted time with kept counts per group and dropped blocks (never under the profile's fixed time)."""
        prof = self.profile
        inside = {g for b in dropped if b in prof.blocks for g in prof.blocks[b].groups}
        saved = sum(self.block_saving(b) for b in dropped)
        saved += sum(self.group_saving(g, k) for g, k in keep.items() if g not in inside)
        return max(prof.dense_ms - saved, prof.fixed_ms, 1e-6)

    def predicted_speedup(self, keep: dict[str, int], dropped: set[str] | frozenset[str] = frozenset()) -> float:
        """``dense_ms / predict_ms(...)``."""
        return self.profile.dense_ms / self.predict_ms(keep, dropped)
