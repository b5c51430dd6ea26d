"""Progress that moves: every stage of a job reports fractional progress (never backwards) and counts in its
detail (evaluation batches, groups scored, sensitivity probes, sequential groups, exports), with an ETA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from simprune.checkpoint import save_state_dict
from simprune.pipeline import PruneJob, run_prune_job
from simprune.pruning.phases import prune
from simprune.zoo import build_model

HW = 16


def _files(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    ckpt = save_state_dict(build_model("cifar_resnet20", num_classes=10).state_dict(), tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, size=(32, HW, HW, 3), dtype=np.uint8), y=np.arange(32) % 10)
    return ckpt, tmp_path / "d.npz"


def _counts(details: list[tuple[str, dict[str, Any]]], what: str, phase: str | None = None) -> list[dict[str, Any]]:
    return [info for p, info in details if info.get("what") == what and phase in (None, p)]


def test_a_job_reports_counts_and_etas_in_every_stage(tmp_path: Path) -> None:
    ckpt, data = _files(tmp_path)
    progress: list[float] = []
    details: list[tuple[str, dict[str, Any]]] = []
    # qsfm reads feature maps, so its sequential selection runs (l1's inside residual blocks is skipped as a no-op)
    job = PruneJob.build(arch="cifar_resnet20", weights=ckpt, calib=data, eval=data, method="qsfm",
                         target_flops_reduction=0.3, allocation="global", compensation={"sequential": True},
                         calib_samples=32, batch_size=8, exports=["onnx", "safetensors"], input_size=(3, HW, HW),
                         device="cpu")
    run_prune_job(job, tmp_path / "out", progress=lambda _s, f: progress.append(f),
                  detail=lambda phase, info: details.append((phase, info)))
    assert progress == sorted(progress) and progress[-1] == 1.0
    for what, phase in (("batches", "eval_before"), ("groups scored", "prune"), ("sequential groups", "prune"),
                        ("exports", "export")):
        seen = _counts(details, what, phase)
        assert seen, f"no '{what}' counts in {phase}"
        assert seen[-1]["done"] == seen[-1]["total"] > 1, seen[-1]
        assert [s["done"] for s in seen] == sorted(s["done"] for s in seen)
        assert any(s.get("eta_s") is not None and s["eta_s"] >= 0 for s in seen), seen
    assert {p for p, i in details if i.get("what") == "batches"} == {"eval_before", "eval_after"}


def test_the_sensitivity_scan_counts_its_probes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10).eval()
    calib = torch.randn(8, 3, HW, HW)
    details: list[tuple[str, dict[str, Any]]] = []
    prune(model, calib[:1], "l1", target_flops_reduction=0.3, calib=calib, allocation="sensitivity",
          allocation_options={"fractions": (0.25, 0.5), "n_images": 8}, compensation={"lstsq": False},
          detail=lambda stage, info: details.append((stage, info)))
    probes = _counts(details, "sensitivity probes")
    assert probes and probes[-1]["done"] == probes[-1]["total"] == 2 * len(_counts(details, "groups scored"))
    assert {stage for stage, _ in details} >= {"scores", "sensitivity"}
