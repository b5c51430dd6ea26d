"""End-to-end job: checkpoint file in, verified artifacts and report out. Used by the CLI and the worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ProgressFn = Callable[[str, float], None]
"""``progress(stage, fraction)``: stage name and overall progress in [0, 1]."""


@dataclass
class PruneJob:
    """Everything a pruning job needs. Paths are local files; the service resolves its ids to paths."""

    arch: str
    weights: Path
    method: str = "l1"
    target_flops_reduction: float | None = None
    pruning_ratio: float | str | None = None  # a float in [0, 1) or "auto"
    method_options: dict[str, Any] = field(default_factory=dict)
    calib: Path | None = None
    calib_samples: int = 1024
    eval: Path | None = None
    eval_samples: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: tuple[int, ...] | None = None
    round_to: int | None = None
    allocation: str = "uniform"  # "uniform" | "global"
    compensation: dict[str, bool] | None = None  # {"fold":, "lstsq":, "bn":}; None = defaults
    device: str = "auto"
    seed: int = 0
    batch_size: int = 128
    finetune: dict[str, Any] | None = None
    exports: tuple[str, ...] = ("pt2", "onnx", "safetensors")


def run_prune_job(
    job: PruneJob,
    out_dir: Path,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run ``job``, write artifacts into ``out_dir`` and return the report (also written as report.json).

    Raises :class:`simprune.errors.InputError` for bad input and :class:`simprune.errors.JobCancelled`
    when ``should_cancel()`` turns true between stages or batches.
    """
    raise NotImplementedError("being written")
