"""``simprune analyze``: per-layer similarity matrices, redundancy statistics, suggested ratios, plots.

The analysis helpers (:func:`similarity_matrix`, :func:`matrix_kind`, :func:`redundancy_stats`,
:func:`suggest_ratio`) are usable on their own; the plots and report.html come from :mod:`simprune.report_html`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simprune.errors import InputError
from simprune.methods import ChannelGroup, Criterion, get_criterion
from simprune.methods._similarity import (
    DIST_DECIMALS,
    cosine_similarity_matrix,
    flat_filters,
    passive_greedy,
)
from simprune.pruning.features import collect_features, to_channel_group
from simprune.pruning.groups import discover_groups
from simprune.report_html import plot_redundancy_bars, plot_similarity_heatmap, write_html_report

MAX_HEATMAPS = 12
THRESHOLDS = (0.9, 0.95, 0.99)
"""Similarity thresholds at which near-duplicate channel pairs are counted."""


def similarity_matrix(method: str | Criterion, group: ChannelGroup) -> np.ndarray:
    """The (C, C) matrix a method judges redundancy by.

    passive_sim / nystrom_sim: ``1 - D`` (cosine similarity of prototypes, rounded as the method does);
    qsfm: Pearson correlation of the feature maps; channel_cluster: its combined *distance*; every other
    method (the baselines): cosine similarity of the flattened filters.
    """
    crit = get_criterion(method) if isinstance(method, str) else method
    fn = getattr(crit, "matrix", None)
    if callable(fn):
        return np.asarray(fn(group), dtype=np.float64)
    return cosine_similarity_matrix(flat_filters(group.weight)).cpu().numpy()


def matrix_kind(method: str | Criterion) -> str:
    """``"distance"`` for methods whose :func:`similarity_matrix` is a distance, else ``"similarity"``."""
    crit = get_criterion(method) if isinstance(method, str) else method
    return str(getattr(crit, "matrix_kind", "similarity"))


def redundancy_stats(matrix: np.ndarray, kind: str = "similarity", absolute: bool = False) -> dict[str, Any]:
    """Summary of a channel similarity (or ``kind="distance"``: converted as ``1 - D``) matrix.

    Returns ``n``, ``mean_offdiag`` and ``max_offdiag`` similarity, ``near_duplicates`` (pairs with
    similarity >= each of :data:`THRESHOLDS`) and ``greedy_keep``: the kept count of passive_sim's greedy
    run on ``D = 1 - similarity`` (rounded to 5 decimals). ``absolute=True`` uses ``|similarity|`` (for
    correlations, where a negative correlation is as redundant as a positive one).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {m.shape}")
    if kind not in ("similarity", "distance"):
        raise ValueError(f"kind must be 'similarity' or 'distance', got {kind!r}")
    sim = 1.0 - m if kind == "distance" else m.copy()
    if absolute:
        sim = np.abs(sim)
    n = len(sim)
    stats: dict[str, Any] = {"n": n, "kind": kind, "absolute": absolute}
    if n < 2:
        stats.update(mean_offdiag=0.0, max_offdiag=0.0, near_duplicates={str(t): 0 for t in THRESHOLDS},
                     greedy_keep=n)
        return stats
    off = sim[np.triu_indices(n, 1)]
    stats["mean_offdiag"] = float(off.mean())
    stats["max_offdiag"] = float(off.max())
    stats["near_duplicates"] = {str(t): int((off >= t).sum()) for t in THRESHOLDS}
    dist = np.round(1.0 - sim, DIST_DECIMALS)
    stats["greedy_keep"] = len(passive_greedy(dist)[0])
    return stats


def suggest_ratio(stats: dict[str, Any] | Sequence[dict[str, Any]], max_ratio: float = 0.9) -> float:
    """A pruning ratio suggested by the redundancy found: ``1 - greedy_keep / n`` (channel-weighted over
    several layers' stats), clipped to ``[0, max_ratio]``."""
    items = [stats] if isinstance(stats, dict) else list(stats)
    total = sum(int(s["n"]) for s in items)
    if total == 0:
        return 0.0
    kept = sum(int(s.get("greedy_keep", s["n"])) for s in items)
    return float(min(max(1.0 - kept / total, 0.0), max_ratio))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _layer_stats(crit: Criterion, group: ChannelGroup, mat: np.ndarray, kind: str, absolute: bool) -> dict[str, Any]:
    """One group's redundancy statistics, suggested ratio and (when the method has one) automatic kept count."""
    stats = redundancy_stats(mat, kind=kind, absolute=absolute)
    stats["suggested_ratio"] = suggest_ratio(stats)
    stats["layer"] = group.name
    auto = crit.auto_keep(group)
    if auto is not None:
        stats["method_auto_keep"] = int(auto)
    return stats


def _write_summary(out_dir: Path, crit: Criterion, kind: str, layers: list[dict[str, Any]],
                   skipped: list[dict[str, str]], plots: list[Path]) -> dict[str, Any]:
    """Write the per-layer bar plots (first in ``plots``), summary.json and report.html; return the summary."""
    names = [s["layer"] for s in layers]
    plots.insert(0, plot_redundancy_bars(names, [s["suggested_ratio"] for s in layers],
                                         out_dir / "suggested_ratios.png", ylabel="suggested pruning ratio"))
    plots.insert(1, plot_redundancy_bars(names, [s["mean_offdiag"] for s in layers],
                                         out_dir / "mean_similarity.png", ylabel="mean off-diagonal similarity"))
    summary = {
        "method": crit.name,
        "matrix_kind": kind,
        "suggested_ratio": suggest_ratio(layers) if layers else 0.0,
        "layers": layers,
        "skipped_groups": skipped,
        "plots": [p.name for p in plots],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    html_layers = [{"name": s["layer"], "channels": s["n"], "mean_similarity": round(s["mean_offdiag"], 4),
                    "greedy_keep": s["greedy_keep"], "suggested_ratio": round(s["suggested_ratio"], 3)}
                   for s in layers]
    write_html_report({"method": crit.name, "suggested_ratio": summary["suggested_ratio"], "layers": html_layers},
                      plots, out_dir / "report.html")
    return summary


def analyze_model(
    model: nn.Module,
    example: torch.Tensor,
    out_dir: Path,
    method: str = "passive_sim",
    calib: Any = None,
    method_options: dict[str, Any] | None = None,
    device: torch.device | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Analyse every prunable group of ``model``; write ``<layer>.npy`` matrices, plots, summary.json and
    report.html into ``out_dir``; return the summary (per-layer stats and suggested ratios)."""
    notify = progress or (lambda stage, frac: None)
    out_dir = Path(out_dir)
    (out_dir / "matrices").mkdir(parents=True, exist_ok=True)
    crit = get_criterion(method, **(method_options or {}))
    if crit.needs_data and calib is None:
        raise InputError(f"method '{method}' needs calibration data (--calib); none was given")
    device = device or torch.device("cpu")
    model.to(device).eval()
    notify("groups", 0.0)
    _, specs, skipped = discover_groups(model, example.to(device))
    features = collect_features(model, specs, calib, device) if calib is not None else {}
    kind = matrix_kind(crit)
    absolute = crit.name in ("qsfm", "channel_cluster")
    layers = []
    plots: list[Path] = []
    for i, spec in enumerate(specs):
        group = to_channel_group(spec, features)
        if crit.needs_data and group.features is None:
            continue
        mat = similarity_matrix(crit, group)
        np.save(out_dir / "matrices" / f"{_safe(spec.name)}.npy", mat)
        layers.append(_layer_stats(crit, group, mat, kind, absolute))
        if len(plots) < MAX_HEATMAPS:
            plots.append(plot_similarity_heatmap(mat, f"{spec.name} ({crit.name}, {kind})",
                                                 out_dir / f"heatmap_{_safe(spec.name)}.png"))
        notify("similarity", (i + 1) / len(specs))
    summary = _write_summary(out_dir, crit, kind, layers, skipped, plots)
    notify("done", 1.0)
    return summary


def analyze_checkpoint(
    arch: str,
    weights: Path,
    out_dir: Path,
    method: str = "passive_sim",
    calib: Path | None = None,
    calib_samples: int = 256,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    num_classes: int | None = None,
    method_options: dict[str, Any] | None = None,
    device: str = "auto",
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """:func:`analyze_model` on a checkpoint file of a zoo architecture (calibration data from a file)."""
    from simprune.checkpoint import load_state_dict
    from simprune.data import make_loader, open_dataset
    from simprune.device import select_device
    from simprune.zoo import build_for_state_dict, get_arch

    try:
        info = get_arch(arch)
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    dev = select_device(device)
    model = build_for_state_dict(arch, load_state_dict(weights), num_classes=num_classes)
    loader = None
    if calib is not None:
        ds = open_dataset(calib, mean=mean or info.mean, std=std or info.std, input_size=info.input_size,
                          limit=calib_samples)
        loader = make_loader(ds, 128)
    example = torch.zeros(1, *info.input_size)
    return analyze_model(model, example, out_dir, method, loader, method_options, dev, progress)
