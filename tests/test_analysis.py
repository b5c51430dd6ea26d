"""Redundancy statistics, plots and the HTML report."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from simprune.analyze import matrix_kind, redundancy_stats, similarity_matrix, suggest_ratio
from simprune.methods import ChannelGroup, get_criterion
from simprune.report_html import plot_layer_bars, plot_redundancy_bars, plot_similarity_heatmap, write_html_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def group(seed: int = 0, c_out: int = 8) -> ChannelGroup:
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(4, c_out, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(c_out, 4, 3, 3, generator=gen))
        conv.weight[5] = 3.0 * conv.weight[1]
    feats = torch.randn(4, c_out, 5, 5, generator=gen)
    feats[:, 6] = -feats[:, 2]
    return ChannelGroup(name="conv", conv=conv, bn=None, n_channels=c_out, features=feats)


def test_similarity_matrix_per_method() -> None:
    g = group()
    ps = similarity_matrix("passive_sim", g)
    assert ps.shape == (8, 8) and np.allclose(np.diag(ps), 1.0) and np.allclose(ps, ps.T)
    assert ps[1, 5] == pytest.approx(1.0)
    ny = similarity_matrix(get_criterion("nystrom_sim"), g)
    assert np.allclose(ny, ps, atol=1e-5)
    base = similarity_matrix("l1", g)  # baselines: cosine of flattened filters
    assert base[1, 5] == pytest.approx(1.0) and abs(base[0, 1]) < 1.0
    corr = similarity_matrix("qsfm", g)
    assert corr[2, 6] == pytest.approx(-1.0)
    dist = similarity_matrix("channel_cluster", g)
    assert matrix_kind("channel_cluster") == "distance" and matrix_kind("qsfm") == "similarity"
    assert np.allclose(np.diag(dist), 0.0) and (dist >= 0).all() and (dist <= 1).all()


def test_redundancy_stats_known_matrix() -> None:
    m = np.eye(4)
    m[0, 1] = m[1, 0] = 0.995
    m[2, 3] = m[3, 2] = -0.96
    s = redundancy_stats(m)
    assert s["n"] == 4 and s["max_offdiag"] == pytest.approx(0.995)
    assert s["near_duplicates"] == {"0.9": 1, "0.95": 1, "0.99": 1}
    assert s["greedy_keep"] == 3  # 0 keeps itself, removes 1; 2 and 3 are kept (their nn is 0 or 1)
    sa = redundancy_stats(m, absolute=True)
    assert sa["near_duplicates"] == {"0.9": 2, "0.95": 2, "0.99": 1} and sa["greedy_keep"] == 2
    sd = redundancy_stats(1.0 - np.abs(m), kind="distance")
    assert sd["near_duplicates"] == sa["near_duplicates"]
    assert redundancy_stats(np.ones((1, 1)))["greedy_keep"] == 1
    with pytest.raises(ValueError):
        redundancy_stats(np.ones((2, 3)))


def test_suggest_ratio() -> None:
    assert suggest_ratio({"n": 16, "greedy_keep": 12}) == pytest.approx(0.25)
    both = [{"n": 16, "greedy_keep": 12}, {"n": 32, "greedy_keep": 20}]
    assert suggest_ratio(both) == pytest.approx(1.0 - 32 / 48)
    assert suggest_ratio({"n": 10, "greedy_keep": 0}) == pytest.approx(0.9)
    assert suggest_ratio([]) == 0.0
    stats = redundancy_stats(similarity_matrix("passive_sim", group()))
    assert stats["greedy_keep"] == get_criterion("passive_sim").auto_keep(group())
    assert 0.0 < suggest_ratio(stats) < 0.9


def test_plots_write_pngs(tmp_path: Path) -> None:
    m = similarity_matrix("passive_sim", group())
    paths = [
        plot_similarity_heatmap(m, "conv: passive_sim", tmp_path / "heat.png"),
        plot_layer_bars(["a", "b", "c"], [16, 16, 32], [11, 11, 22], tmp_path / "sub" / "layers.png"),
        plot_redundancy_bars(["a", "b"], [0.3, 0.1], tmp_path / "red.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 1000
    with pytest.raises(ValueError):
        plot_layer_bars(["a"], [1, 2], [1], tmp_path / "bad.png")


def test_html_report(tmp_path: Path) -> None:
    heat = plot_similarity_heatmap(np.eye(3), "eye", tmp_path / "heat.png")
    bars = plot_layer_bars(["l1", "l2"], [16, 32], [11, 22], tmp_path / "bars.png")
    report = {
        "arch": "dcase_cnn",
        "method": "passive_sim",
        "flops_before": 1_000_000,
        "flops_after": 730_000,
        "params": {"before": 46_000, "after": 34_500},
        "accuracy_before": 0.4858,
        "accuracy_after": 0.4791,
        "timings": {"select": 0.12, "export": 1.5},
        "layers": [{"name": "conv1", "channels_before": 16, "channels_after": 11},
                   {"name": "conv2<x>", "channels_before": 32, "channels_after": 22}],
        "seed": 7,
    }
    out = write_html_report(report, [heat, bars], tmp_path / "out" / "report.html")
    text = out.read_text()
    for needle in ("dcase_cnn", "passive_sim", "1,000,000", "730,000", "27.00%", "25.00%", "0.4858",
                   "-0.0067", "export", "conv1", "conv2&lt;x&gt;", "seed"):
        assert needle in text, needle
    assert text.count("data:image/png;base64,") == 2
    assert base64.b64encode(heat.read_bytes()).decode() in text
