"""Redundancy analysis and report plots: similarity matrices, their statistics, PNG plots and report.html.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so they are
safe in a worker process and in threads.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simprune.methods import ChannelGroup, Criterion, get_criterion
from simprune.methods._similarity import (
    DIST_DECIMALS,
    cosine_similarity_matrix,
    flat_filters,
    passive_greedy,
)

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


# --------------------------------------------------------------------------------------------------------
# Plots


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_similarity_heatmap(matrix: np.ndarray, title: str, path: Path | str) -> Path:
    """Heat map of a channel similarity/distance matrix, written as a PNG."""
    m = np.asarray(matrix, dtype=np.float64)
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    lo, hi = float(m.min(initial=0.0)), float(m.max(initial=1.0))
    im = ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    ax.set_xlabel("channel")
    ax.set_ylabel("channel")
    fig.tight_layout()
    return _save(fig, path)


def _bar_figure(n: int) -> tuple[Figure, Any]:
    fig = Figure(figsize=(max(6.0, 0.35 * n + 2.0), 4.0))
    return fig, fig.add_subplot()


def plot_layer_bars(names: Sequence[str], before: Sequence[int], after: Sequence[int],
                    path: Path | str) -> Path:
    """Grouped bars: channels per layer before and after pruning, written as a PNG."""
    if not (len(names) == len(before) == len(after)):
        raise ValueError("names, before and after must have the same length")
    x = np.arange(len(names))
    fig, ax = _bar_figure(len(names))
    ax.bar(x - 0.2, before, width=0.4, label="before", color="#9aa5b1")
    ax.bar(x + 0.2, after, width=0.4, label="after", color="#2b7bb9")
    ax.set_xticks(x, list(names), rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_redundancy_bars(names: Sequence[str], values: Sequence[float], path: Path | str,
                         ylabel: str = "redundancy") -> Path:
    """One bar per layer (for example the fraction of channels the greedy finds redundant), as a PNG."""
    if len(names) != len(values):
        raise ValueError("names and values must have the same length")
    x = np.arange(len(names))
    fig, ax = _bar_figure(len(names))
    ax.bar(x, values, color="#d9822b")
    ax.set_xticks(x, list(names), rotation=70, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------------
# HTML report

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:1em 0;border:1px solid #eee}"
)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def _pct_drop(before: Any, after: Any) -> str:
    if isinstance(before, int | float) and isinstance(after, int | float) and before:
        return f"{100.0 * (1.0 - after / before):.2f}%"
    return "-"


def _get(report: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        cur: Any = report
        for part in k.split("."):
            if not isinstance(cur, dict) or part not in cur:
                cur = None
                break
            cur = cur[part]
        if cur is not None:
            return cur
    return None


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html_report(report: dict[str, Any], plots: Sequence[Path | str], path: Path | str) -> Path:
    """Write a self-contained report.html (plots embedded as base64 PNG).

    Reads, where present: ``arch``, ``method``, ``flops_before``/``flops_after`` (or ``flops.before``/
    ``flops.after``), the same for ``params`` and ``accuracy``, ``timings`` (name -> seconds) and
    ``layers`` (a list of dicts, e.g. ``name``, ``channels_before``, ``channels_after``), rendered as tables.
    Other top-level scalars are listed under "details".
    """
    summary: list[list[Any]] = [[k, _get(report, k), "", ""] for k in ("arch", "method")]
    for key in ("flops", "params", "accuracy"):
        b = _get(report, f"{key}_before", f"{key}.before")
        a = _get(report, f"{key}_after", f"{key}.after")
        if b is None and a is None:
            continue
        change = _pct_drop(b, a) if key != "accuracy" else (
            f"{a - b:+.4g}" if isinstance(a, int | float) and isinstance(b, int | float) else "-")
        summary.append([key, b, a, change])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>simprune report</title>"
             f"<style>{_CSS}</style></head><body><h1>simprune report</h1>",
             "<h2>Summary</h2>", _table(["", "before", "after", "reduction / change"], summary)]
    timings = _get(report, "timings")
    if isinstance(timings, dict) and timings:
        parts += ["<h2>Timings (s)</h2>", _table(["stage", "seconds"], list(timings.items()))]
    layers = _get(report, "layers")
    if isinstance(layers, list) and layers and all(isinstance(r, dict) for r in layers):
        cols: list[str] = []
        for r in layers:
            cols += [k for k, v in r.items() if k not in cols and not isinstance(v, dict | list)]
        parts += ["<h2>Layers</h2>", _table(cols, [[r.get(c) for c in cols] for r in layers])]
    shown = {"arch", "method", "timings", "layers", "flops", "params", "accuracy"}
    shown |= {f"{k}_{s}" for k in ("flops", "params", "accuracy") for s in ("before", "after")}
    details = [[k, v] for k, v in report.items() if k not in shown and not isinstance(v, dict | list)]
    if details:
        parts += ["<h2>Details</h2>", _table(["key", "value"], details)]
    if plots:
        parts.append("<h2>Plots</h2>")
    for p in plots:
        p = Path(p)
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(p.stem)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(p.stem)}</figcaption></figure>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
