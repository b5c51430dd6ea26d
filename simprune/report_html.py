"""Report plots and the HTML report: PNG heat maps and bar charts, a self-contained report.html.

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


def plot_latency_bars(rows: Sequence[dict[str, Any]], path: Path | str, title: str = "latency") -> Path:
    """Dense vs pruned milliseconds, one panel per (runtime, batch) row of a latency measurement
    (:func:`simprune.latency.measure_latency`), the speedup over each panel, as a PNG."""
    if not rows:
        raise ValueError("no latency rows to plot")
    fig = Figure(figsize=(max(4.0, 2.2 * len(rows) + 1.0), 3.6))
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, r in zip(axes, rows, strict=True):
        ax.bar([0, 1], [r["dense_ms"], r["pruned_ms"]], color=["#9aa5b1", "#2b7bb9"], width=0.6)
        ax.set_xticks([0, 1], ["dense", "pruned"])
        ax.set_title(f"{r['runtime']}, batch {r['batch']}\n{r['speedup']:.2f}x", fontsize=9)
        ax.set_ylabel("ms (median)" if ax is axes[0] else "")
    fig.suptitle(title, fontsize=10)
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


def _latency_html(report: dict[str, Any]) -> list[str]:
    """The warnings, predicted vs measured speedup and the latency table, where the report has them."""
    parts: list[str] = []
    warnings = report.get("warnings")
    if isinstance(warnings, list) and warnings:
        parts += ["<h2>Warnings</h2><ul>", *(f"<li>{html.escape(str(w))}</li>" for w in warnings), "</ul>"]
    target = report.get("latency_target")
    if isinstance(target, dict) and target:
        parts += ["<h2>Latency target</h2>", _table(["target", "predicted", "measured", "profile"], [[
            target.get("target_speedup"), report.get("predicted_speedup"), target.get("measured_speedup"),
            target.get("profile_source")]])]
    latency = report.get("latency")
    if isinstance(latency, dict) and latency.get("rows"):
        env = latency.get("environment") or {}
        cols = ["runtime", "batch", "dense_ms", "pruned_ms", "speedup", "efficiency", "dense_peak_mb",
                "pruned_peak_mb", "rounds"]
        parts += ["<h2>Latency</h2>", f"<p>{html.escape(str(env.get('device_name', '')))} "
                  f"({html.escape(str(latency.get('device')))}, threads {_fmt(latency.get('threads'))}, torch "
                  f"{html.escape(str(env.get('torch')))}, onnxruntime {html.escape(str(env.get('onnxruntime')))}); "
                  f"FLOPs ratio {_fmt(latency.get('flops_ratio'))}; memory: "
                  f"{html.escape(str(latency.get('memory_method')))}</p>",
                  _table(cols, [[r.get(c) for c in cols] for r in latency["rows"]])]
    return parts


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
    parts += _latency_html(report)
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
