"""``simprune analyze``: per-layer similarity matrices, redundancy statistics, suggested ratios, plots."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simprune.analysis import (
    matrix_kind,
    plot_redundancy_bars,
    plot_similarity_heatmap,
    redundancy_stats,
    similarity_matrix,
    suggest_ratio,
    write_html_report,
)
from simprune.methods import get_criterion
from simprune.errors import InputError
from simprune.pruning.engine import _to_channel_group, collect_features
from simprune.pruning.groups import discover_groups

MAX_HEATMAPS = 12


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


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
        group = _to_channel_group(spec, features)
        if crit.needs_data and group.features is None:
            continue
        mat = similarity_matrix(crit, group)
        np.save(out_dir / "matrices" / f"{_safe(spec.name)}.npy", mat)
        stats = redundancy_stats(mat, kind=kind, absolute=absolute)
        stats["suggested_ratio"] = suggest_ratio(stats)
        stats["layer"] = spec.name
        auto = crit.auto_keep(group)
        if auto is not None:
            stats["method_auto_keep"] = int(auto)
        layers.append(stats)
        if len(plots) < MAX_HEATMAPS:
            plots.append(plot_similarity_heatmap(mat, f"{spec.name} ({crit.name}, {kind})",
                                                 out_dir / f"heatmap_{_safe(spec.name)}.png"))
        notify("similarity", (i + 1) / len(specs))
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
    from simprune.evaluate import select_device
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
