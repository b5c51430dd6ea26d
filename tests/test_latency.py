"""Measured latency: structure of a dense-vs-pruned measurement (eager and ONNX Runtime), the time budget, the
slow-speedup warning and the plot. Structure and sanity only: timings on a shared machine are never asserted."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from simprune.latency import (
    LatencyConfig,
    activation_peak_bytes,
    environment,
    latency_warning,
    measure_latency,
    time_interleaved,
)
from simprune.report_html import plot_latency_bars

SIZE = (3, 8, 8)


def _net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


def _onnx(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():  # the TorchScript exporter: deprecated, and the fastest for a test
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, *SIZE),), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def test_dense_vs_pruned_rows_for_each_runtime_and_batch(tmp_path: Path, one_thread_module: None) -> None:
    dense, pruned = _net(32), _net(8)
    onnx = (_onnx(dense, tmp_path / "d.onnx"), _onnx(pruned, tmp_path / "p.onnx"))
    out = measure_latency(dense, pruned, SIZE, "cpu", onnx=onnx, flops_ratio=2.0,
                          config=LatencyConfig(batch_sizes=(1, 4), warmup=1, repeats=3, budget_s=20, threads=1))
    assert {(r["runtime"], r["batch"]) for r in out["rows"]} == {(rt, b) for rt in ("eager", "onnxruntime")
                                                                for b in (1, 4)}
    for r in out["rows"]:
        assert r["rounds"] >= 3 and r["dense_ms"] > 0 and r["pruned_ms"] > 0
        assert r["dense_min_ms"] <= r["dense_ms"] and r["speedup"] == pytest.approx(r["dense_ms"] / r["pruned_ms"],
                                                                                     rel=0.02)  # ms are rounded
        assert r["efficiency"] == pytest.approx(r["speedup"] / 2.0, rel=1e-3)
    eager = [r for r in out["rows"] if r["runtime"] == "eager"]
    assert all(r["dense_peak_mb"] > 0 and r["pruned_peak_mb"] > 0 for r in eager)
    assert out["memory_method"] == "module_outputs_estimate" and out["threads"] == 1
    assert out["weights_mb"]["pruned"] < out["weights_mb"]["dense"]
    env = out["environment"]
    assert env["device_type"] == "cpu" and env["device_name"] and env["torch"] == torch.__version__
    assert env["onnxruntime"] and out["onnxruntime_provider"] == "CPUExecutionProvider"
    assert out["speedup"] == eager[0]["speedup"] and out["skipped"] == []


def test_a_cell_over_the_budget_is_skipped_with_the_reason() -> None:
    times, why = time_interleaved([lambda: time.sleep(0.05)], torch.device("cpu"), warmup=1, repeats=10,
                                  budget_s=0.1)
    assert times == [] and "do not fit" in why
    times, why = time_interleaved([lambda: None, lambda: None], torch.device("cpu"), warmup=1, repeats=4,
                                  budget_s=5)
    assert why is None and [len(t) for t in times] == [4, 4]


def test_peak_estimate_grows_with_the_batch_and_environment_names_the_device() -> None:
    net = _net(16)
    assert activation_peak_bytes(net, torch.randn(4, *SIZE)) > activation_peak_bytes(net, torch.randn(1, *SIZE))
    assert environment("cpu", threads=3)["threads"] == 3


def test_warning_when_speedup_is_under_half_the_flops_ratio(tmp_path: Path) -> None:
    rows = [{"runtime": "eager", "batch": 1, "dense_ms": 2.0, "pruned_ms": 1.9, "speedup": 1.05},
            {"runtime": "eager", "batch": 32, "dense_ms": 40.0, "pruned_ms": 20.0, "speedup": 2.0}]
    latency = {"device": "cpu", "rows": rows}
    warning = latency_warning(latency, flops_ratio=3.0)
    assert warning is not None and "batch 1: 1.05x" in warning and "batch 32" not in warning
    assert latency_warning(latency, flops_ratio=2.0) is None
    png = plot_latency_bars(rows, tmp_path / "latency.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
