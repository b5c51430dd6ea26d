"""Presets: what each selects, the default with and without data, explicit switches winning, and jobs that
run them end to end (report names the preset; best drops blocks where it pays and reconstructs blocks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from simprune.compute import bf16_native
from simprune.jobspec import JobSpec
from simprune.pipeline import PruneJob, run_prune_job
from simprune.presets import BEST_BUDGET_MACS, PRESETS, default_preset, presets_catalogue, resolve_preset
from simprune.pruning.phases import (
    DEFAULT_COMPENSATION_OPTIONS,
    RECON_MIN_STEPS,
    SCAN_MIN_IMAGES,
    budgeted,
    output_recon_lr,
    recon_steps,
)
from simprune.zoo import build_model

HW = 16


def test_default_is_best_with_data_and_data_free_without(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMPRUNE_DEFAULT_PRESET", raising=False)
    best = resolve_preset(None, has_calibration=True)
    assert best["preset"] == "best" and best["allocation"] == "sensitivity"
    assert best["compensation"]["sequential"] and best["compensation"]["block_recon"]
    assert best["compensation"]["output_recon"]
    assert best["allocation_options"] == {"depth": True, "budget_macs": BEST_BUDGET_MACS}
    assert best["compensation_options"] == {"block_recon_steps": 600, "block_recon_images": 1024,
                                            "recon_budget_macs": BEST_BUDGET_MACS}
    free = resolve_preset(None, has_calibration=False)
    assert free["preset"] == "data_free" and not any(free["compensation"].values())
    assert resolve_preset("best", has_calibration=False)["preset"] == "data_free"  # nothing to calibrate on
    monkeypatch.setenv("SIMPRUNE_DEFAULT_PRESET", "balanced")
    assert default_preset(True) == "balanced" and default_preset(False) == "data_free"
    monkeypatch.setenv("SIMPRUNE_DEFAULT_PRESET", "nonsense")
    assert default_preset(True) == "best"


def test_each_preset_selects_what_it_says() -> None:
    fast, balanced = resolve_preset("fast", has_calibration=True), resolve_preset("balanced", has_calibration=True)
    assert fast["allocation"] == "uniform" and not fast["compensation"]["sequential"]
    assert not fast["compensation"]["block_recon"] and fast["compensation"]["lstsq"]
    assert not fast["compensation"]["output_recon"] and fast["compensation_options"] == {}
    assert balanced["allocation"] == "sensitivity" and balanced["compensation"]["block_recon"]
    assert not balanced["compensation"]["sequential"] and balanced["allocation_options"] == {"n_images": 128}
    uniform = resolve_preset("balanced", has_calibration=True, allocation="uniform")
    assert uniform["allocation_options"] == {}  # the scan's options go with the sensitivity allocation
    assert balanced["compensation"]["output_recon"]  # a short one: 300 steps instead of best's 1,000
    assert balanced["compensation_options"] == {"output_recon_steps": 300}
    names = [p["name"] for p in presets_catalogue()]
    assert names == list(PRESETS) and all(p["summary"] for p in presets_catalogue())


def test_best_scales_its_reconstruction_steps_down_on_costlier_models() -> None:
    copts = resolve_preset("best", has_calibration=True)["compensation_options"]
    copts = {"output_recon_steps": 1000} | copts
    resnet20, resnet56 = 40_551_040, 125_485_696  # MACs per 32x32 image
    assert recon_steps(copts, "block_recon_steps", resnet20) == 600
    assert recon_steps(copts, "output_recon_steps", resnet20) == 1000
    assert recon_steps(copts, "block_recon_steps", resnet56) == RECON_MIN_STEPS["block_recon_steps"] == 200
    assert recon_steps(copts, "output_recon_steps", resnet56) == 327  # 1,000 x 41 M / 125.5 M
    assert recon_steps(copts, "output_recon_steps", 4_100_000_000) == 300  # never below balanced's count
    assert recon_steps(copts | {"output_recon_steps": 100}, "output_recon_steps", 4_100_000_000) == 100
    unscaled = {"output_recon_steps": 1000, "recon_budget_macs": None}
    assert recon_steps(unscaled, "output_recon_steps", resnet56) == 1000
    scan = resolve_preset("best", has_calibration=True)["allocation_options"]["budget_macs"]  # the scan's images
    assert budgeted(256, scan, resnet20, SCAN_MIN_IMAGES) == 256 and budgeted(256, scan, resnet56, 128) == 128
    full = DEFAULT_COMPENSATION_OPTIONS | copts  # the output stage's rate follows its cut steps (square root)
    assert full["output_recon_lr"] == 5e-4 and output_recon_lr(full, resnet20) == 5e-4
    assert output_recon_lr(full, resnet56) == pytest.approx(5e-4 * (327 / 1000) ** 0.5)
    assert output_recon_lr(DEFAULT_COMPENSATION_OPTIONS | unscaled, resnet56) == 5e-4


def test_a_bad_reconstruction_budget_is_refused() -> None:
    from simprune.errors import InputError
    from simprune.pruning.phases import prune

    model = build_model("cifar_resnet20")
    x = torch.randn(4, 3, HW, HW)
    for bad in (-1, 0, float("nan"), "lots", True):
        with pytest.raises(InputError, match="recon_budget_macs"):
            prune(model, x[:1], "l1", pruning_ratio=0.3, calib=x, compensation_options={"recon_budget_macs": bad})
        with pytest.raises(InputError, match="budget_macs"):
            prune(model, x[:1], "l1", target_flops_reduction=0.3, calib=x, allocation="sensitivity",
                  allocation_options={"budget_macs": bad})


def test_explicit_switches_win_over_the_preset() -> None:
    r = resolve_preset("best", has_calibration=True, allocation="uniform", compensation={"block_recon": False})
    assert r["allocation"] == "uniform" and "depth" not in r["allocation_options"]
    assert r["compensation"]["sequential"] and not r["compensation"]["block_recon"]
    spec = JobSpec(method="l1", pruning_ratio="auto", preset="best")
    assert spec.settings(has_calibration=True)["allocation"] == "uniform"  # the method's own counts
    spec = JobSpec(method="qsfm", target_flops_reduction=0.5, depth=False)
    assert spec.settings(has_calibration=True)["allocation_options"] == {"depth": False}
    assert JobSpec(method="l1", target_flops_reduction=0.5, preset="best").data_errors(False, False) == [
        ("calibration", "preset 'best' needs calibration data (without any, name no preset: the data-free path runs)")]
    assert JobSpec(method="l1", target_flops_reduction=0.5).data_errors(False, False) == []
    with pytest.raises(ValueError, match="depth needs allocation 'sensitivity'"):
        JobSpec(method="l1", target_flops_reduction=0.5, preset="fast", depth=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("presets")
    torch.manual_seed(0)
    model = build_model("cifar_resnet20")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    weights = root / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    rng = np.random.default_rng(0)
    calib = root / "calib.npz"
    np.savez(calib, x=rng.integers(0, 255, (48, HW, HW, 3)).astype(np.uint8), y=rng.integers(0, 4, 48))
    return {"weights": weights, "calib": calib}


def _run(files: dict[str, Path], tmp: Path, **kw: Any) -> dict[str, Any]:
    job = PruneJob.build(arch="cifar_resnet20", weights=files["weights"], input_size=(3, HW, HW),
                         calib=files["calib"], calib_samples=48, batch_size=16, device="cpu",
                         exports=("safetensors",), measure_latency=False, target_flops_reduction=0.4, **kw)
    return run_prune_job(job, tmp)


def test_best_job_runs_every_stage_and_says_so(files: dict[str, Path], tmp_path: Path,
                                                one_thread_module: None) -> None:
    report = _run(files, tmp_path, method="l1", preset="best")
    assert report["preset"] == "best" and report["allocation"] == "sensitivity"
    assert report["compensation_options"]["sequential"] is True
    assert report["compensation_options"]["block_recon_steps"] == 600  # the preset's longer reconstruction
    assert report["block_recon"]["steps"] == 600  # a model cheaper than the budget: the full count
    assert report["sequential"] == {"ran": False, "skipped_as_order_free": True}  # l1 inside blocks
    assert report["block_recon"]["units"] and report["block_recon"]["mean_error_after"] <= \
        report["block_recon"]["mean_error_before"]
    assert report["block_sensitivity"]  # the depth search weighed every removable block
    recon = report["output_recon"]  # the whole model fitted to the dense outputs, kept only if it helped
    # 1,000 steps asked, 72 passes over 42 images allowed (batch 42): a small calibration set gets fewer steps
    assert recon["steps"] == 72 and recon["held_out_images"] == 6 and isinstance(recon["kept"], bool)
    assert recon["lr"] == 5e-4  # steps capped by the small set, not cut by the budget: the full rate
    assert recon["mix"] == "cutmix" and recon["keep"] == "best"  # 72 passes: a long fit, mixed (the auto rule)
    # both reconstructions in bf16 where this CPU computes it natively (fp32 weights and losses), else fp32
    native = bf16_native(torch.device("cpu"))
    assert recon["bf16"] is native and recon["teacher_bf16"] is native and report["block_recon"]["bf16"] is native
    assert not recon["kept"] or recon["held_out_loss_after"] <= recon["held_out_loss_before"]
    assert abs(report["flops_reduction"] - 0.4) < 0.02
    assert next(e for e in report["exports"] if e["format"] == "plan")["verified"]


def test_balanced_job_runs_a_short_output_reconstruction(files: dict[str, Path], tmp_path: Path,
                                                          one_thread_module: None) -> None:
    report = _run(files, tmp_path, method="l1", preset="balanced")
    assert report["preset"] == "balanced" and report["compensation_options"]["output_recon_steps"] == 300
    assert report["allocation_options"]["n_images"] == 128 and not report["allocation_options"]["depth"]
    assert report["compensation_options"]["sequential"] is False and not report.get("block_sensitivity")
    assert report["block_recon"]["units"] and report["output_recon"]["steps"] == 72  # 72 passes over 42 images
    assert next(e for e in report["exports"] if e["format"] == "plan")["verified"]


def test_fast_job_skips_the_slow_stages(files: dict[str, Path], tmp_path: Path, one_thread_module: None) -> None:
    report = _run(files, tmp_path, method="l1", preset="fast")
    assert report["preset"] == "fast" and report["allocation"] == "uniform"
    assert report["block_recon"] == {} and report["compensation_options"]["sequential"] is False
    assert report["output_recon"] == {}
