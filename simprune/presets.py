"""Named pipelines over the pruning switches: ``fast``, ``balanced``, ``best`` (and the data-free path).

A job that names only a method and a target gets ``best`` when it has calibration data and ``data_free``
when it has none. A preset only fills in what the job leaves unset: an explicit ``allocation``,
``compensation`` switch or allocation option always wins, so a job can ask for less (or more) than its
preset. Methods whose criterion cannot run sequentially or with a sensitivity scan fall back to what they
support (see :func:`resolve_preset`). Measured accuracy and time of each preset: BENCHMARKS.md, section
"Presets".

This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

BEST_BUDGET_MACS = 41_000_000
"""The model cost (multiply-accumulates per input, about a CIFAR ResNet-20's) up to which ``best`` runs its
sensitivity scan on 256 images and its reconstructions' full step counts; a costlier model gets proportionally
fewer, down to ``balanced``'s (128 images, 200 / 300 steps; :func:`simprune.pruning.phases.budgeted`), so that
these stages cost about the same whatever the model."""

PresetName = Literal["fast", "balanced", "best", "data_free"]
PRESET_NAMES: tuple[str, ...] = ("fast", "balanced", "best", "data_free")


@dataclass(frozen=True)
class Preset:
    """One named pipeline: how the reduction is spread and which compensation stages run."""

    name: str
    summary: str
    allocation: str
    compensation: dict[str, bool]
    allocation_options: dict[str, Any] = field(default_factory=dict)
    needs_calibration: bool = True
    compensation_options: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "fast": Preset(
        "fast", "uniform widths, one-shot selection, fold + least squares + BatchNorm re-estimation",
        "uniform", {"fold": True, "lstsq": True, "bn": True, "sequential": False, "block_recon": False,
                    "output_recon": False}),
    "balanced": Preset(
        "balanced", "widths by measured sensitivity, one-shot selection, least squares, block reconstruction, a "
                    "short output reconstruction",
        "sensitivity", {"fold": True, "lstsq": True, "bn": True, "sequential": False, "block_recon": True,
                        "output_recon": True},
        # a sensitivity scan on 128 images (half the default) and 300 output-reconstruction steps (1,000 from the
        # same start: 82.56 vs 82.53, seed 0): ResNet-56 at 50% FLOPs -0.68 over 3 seeds in about 2 minutes on 2
        # CPU threads (`best`: -0.61 in about 5); see BENCHMARKS.md, "Presets".
        {"n_images": 128},
        compensation_options={"output_recon_steps": 300}),
    "best": Preset(
        "best", "widths and residual blocks by measured sensitivity, sequential selection with re-fits (where it "
                "can change the choice), least squares, block reconstruction, output reconstruction; the scan's "
                "images and the reconstructions' steps scaled down on models costlier than a ResNet-20",
        "sensitivity", {"fold": True, "lstsq": True, "bn": True, "sequential": True, "block_recon": True,
                        "output_recon": True},
        {"depth": True, "budget_macs": BEST_BUDGET_MACS},
        # a sensitivity scan on 256 images; block reconstruction, 600 steps on 1,024 images: +1.6 points over
        # the 200 on 512 of `balanced` on ResNet-20 at 50% FLOPs (1,500 steps: no further gain); output
        # reconstruction, 1,000 steps (the options' defaults, temperature 4). The scan's images and both step
        # counts are scaled by BEST_BUDGET_MACS / the model's MACs where that is under 1, down to `balanced`'s
        # 128 images and 200 / 300 steps: a ResNet-56 (125 M MACs) gets 128 images and 200 / 327 steps, which on
        # ResNet-56 do what the full counts do (BENCHMARKS.md, "Presets") in well under half the time.
        # The cut output stage runs at 5e-4 x sqrt(327 / 1,000) (phases.output_recon_lr): at the full rate one
        # ResNet-56 calibration seed in three kept nothing.
        compensation_options={"block_recon_steps": 600, "block_recon_images": 1024,
                              "recon_budget_macs": BEST_BUDGET_MACS}),
    "data_free": Preset(
        "data_free", "no calibration data: uniform widths, the criterion's choice, no compensation",
        "uniform", {"fold": False, "lstsq": False, "bn": False, "sequential": False, "block_recon": False,
                    "output_recon": False},
        needs_calibration=False),
}


def default_preset(has_calibration: bool) -> str:
    """The preset of a job that names none: ``best`` with calibration data, ``data_free`` without. An operator
    can lower the default with ``SIMPRUNE_DEFAULT_PRESET`` (``fast`` or ``balanced``; it applies only to jobs
    with calibration data)."""
    import os

    if not has_calibration:
        return "data_free"
    chosen = os.environ.get("SIMPRUNE_DEFAULT_PRESET", "").strip().lower()
    return chosen if chosen in ("fast", "balanced", "best") else "best"


def resolve_preset(
    preset: str | None,
    *,
    has_calibration: bool,
    allocation: str | None = None,
    compensation: dict[str, bool] | None = None,
    allocation_options: dict[str, Any] | None = None,
    method_sequential: bool = True,
) -> dict[str, Any]:
    """The settings a job runs with: ``{"preset", "allocation", "compensation", "allocation_options",
    "compensation_options"}`` (the last: the preset's own, such as ``best``'s longer block reconstruction).

    ``preset`` None picks :func:`default_preset`. Explicit ``allocation``,
    ``compensation`` switches and ``allocation_options`` override the preset's. A preset that needs data on a
    job without any falls back to ``data_free`` (the caller's data checks still refuse methods that need
    data). ``method_sequential`` False (a criterion that cannot score a partly pruned model) turns the
    preset's sequential selection off unless the job asked for it.
    """
    name = preset or default_preset(has_calibration)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    chosen = PRESETS[name]
    if chosen.needs_calibration and not has_calibration:
        chosen = PRESETS["data_free"]
    comp = dict(chosen.compensation)
    if not method_sequential:
        comp["sequential"] = False
    comp.update(compensation or {})
    aopts = dict(chosen.allocation_options) | dict(allocation_options or {})
    alloc = allocation or chosen.allocation
    if alloc != "sensitivity":  # the preset's scan options (depth, images) belong to the sensitivity allocation
        aopts = dict(allocation_options or {})
    return {"preset": chosen.name, "allocation": alloc, "compensation": comp, "allocation_options": aopts,
            "compensation_options": dict(chosen.compensation_options)}


def presets_catalogue() -> list[dict[str, Any]]:
    """Every preset as plain data (``GET /v1/methods`` lists them): name, summary, allocation, compensation
    switches, allocation options, whether it needs calibration data and whether it is the default."""
    default = default_preset(True)
    return [{"name": p.name, "summary": p.summary, "allocation": p.allocation, "compensation": dict(p.compensation),
             "allocation_options": dict(p.allocation_options),
             "compensation_options": dict(p.compensation_options), "needs_calibration": p.needs_calibration,
             "default": p.name == default or (p.name == "data_free")} for p in PRESETS.values()]
