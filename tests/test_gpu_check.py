"""``bench/gpu_check.py --device cpu --quick``: the GPU check's CPU rehearsal runs every step for real (the
engine CLI, the fine-tuning and latency benchmarks, ``simprune serve`` with a worker and a job sequence, then
SIGTERM) on a small checkpoint and data set, and prints one summary line per step. ``--device cuda`` without
CUDA, and missing data, fail with one line (exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from simprune.checkpoint import save_state_dict
from simprune.zoo import build_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gpu_check")
    torch.manual_seed(0)
    ckpt = save_state_dict(build_model("cifar_resnet20", num_classes=10).state_dict(), d / "r20.safetensors")
    rng = np.random.default_rng(0)
    for name, n in (("train", 160), ("eval", 80)):
        np.savez(d / f"{name}.npz", x=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
                 y=(np.arange(n) % 10).astype(np.int64))
    return {"checkpoint": ckpt, "train": d / "train.npz", "eval": d / "eval.npz"}


def _args(small: dict[str, Path]) -> list[str]:
    return ["--arch", "cifar_resnet20", *(x for k, p in small.items() for x in (f"--{k}", str(p)))]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_and_missing_data_fail_with_one_line(small: dict[str, Path], tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", *_args(small)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "CUDA is not available" in res.stderr
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--checkpoint", str(tmp_path / "no.th")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not found: --checkpoint" in res.stderr, res.stderr


def test_cpu_quick_rehearsal_runs_every_step(small: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out),
                          *_args(small)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    log = (out / "log.txt").read_text(errors="replace")[-6000:] if (out / "log.txt").exists() else ""
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{log}"
    lines = res.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["A_engine", "B_finetune", "C_latency", "D_service", "E_oom"]
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert steps["A_engine"]["device"] == "cpu" and steps["A_engine"]["flops_reduction"] > 0.4
    assert set(steps["B_finetune"]["rows"]) == {"dense", "l1"}
    lat = steps["C_latency"]["ms_speedup"]
    assert list(lat) == ["cifar_resnet20/b1/fp32"] and all(ms > 0 for ms, _speedup in lat.values())
    d = steps["D_service"]
    assert [j["status"] for j in d["jobs"]] == ["succeeded", "succeeded"] and d["workers_left"] == []
    assert d["serve_rc"] == 0 and d["pt2"]["shape"] == [2, 10]
    assert [j["workers_after"][0]["jobs_done"] for j in d["jobs"]] == [1, 2]  # the registry counts them
    assert all(j["workers_after"][0]["gpu_memory"] == {"before": None, "after": None} for j in d["jobs"])  # no CUDA
    assert steps["E_oom"]["status"] == "skip"
    assert (out / "summary.txt").read_text().splitlines() == lines
