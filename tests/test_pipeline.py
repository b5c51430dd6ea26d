"""run_prune_job end to end: report, verified exports, fine-tuning (+ resume), dcff, ssc, cancellation, measured
latency, and latency targets with a device profile (a file, or the worker's cached one)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from simprune.errors import InputError, JobCancelled
from simprune.methods.ssc import SSC_PLAN_FORMAT, load_ssc
from simprune.pipeline import PruneJob, run_prune_job
from simprune.plan import load_pruned
from simprune.zoo import build_model

HW = 16  # the CIFAR ResNets pool globally: small inputs keep the tests fast
REPORT_KEYS = {"arch", "method", "flops_before", "flops_after", "params_before", "params_after", "flops_reduction",
               "params_reduction", "accuracy_before", "accuracy_after", "timings", "per_layer", "exports", "versions"}


def _images(n: int, seed: int, path: Path) -> Path:
    """4 easy classes of uint8 RGB images: class k < 3 brightens channel k, class 3 is dark."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(128, 25, (n, HW, HW, 3))
    for k in range(3):
        x[y == k, :, :, k] += 90
    x[y == 3] -= 70
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y.astype(np.int64))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    model = build_model("cifar_resnet20")
    weights = root / "resnet20.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return {"weights": weights, "train": _images(128, 1, root / "train.npz"),
            "eval": _images(64, 2, root / "eval.npz")}


def _job(files: dict[str, Path], **kw: Any) -> PruneJob:
    base: dict[str, Any] = dict(arch="cifar_resnet20", weights=files["weights"], input_size=(3, HW, HW),
                                eval=files["eval"], calib=files["train"], calib_samples=32, batch_size=32,
                                device="cpu", exports=("safetensors",), measure_latency=False)
    base.update(kw)
    if base.get("finetune"):
        base.setdefault("train", files["train"])
    return PruneJob.build(**base)


def _ft(files: dict[str, Path], epochs: int = 1, **kw: Any) -> dict[str, Any]:
    return {"epochs": epochs, "lr": 0.05, "batch_size": 16, "distill": False, "warmup_frac": 0.0, **kw}


def _verified(report: dict[str, Any], files: set[str]) -> None:
    got = {e["file"]: e for e in report["exports"]}
    assert files <= set(got)
    for name in files:
        assert got[name]["max_abs_diff"] is not None and got[name]["max_abs_diff"] < 1e-3, got[name]


def test_report_exports_and_finetune_improves(files: dict[str, Path], tmp_path: Path) -> None:
    stages: list[str] = []
    details: list[dict[str, Any]] = []
    job = _job(files, method="l1", target_flops_reduction=0.3, finetune=_ft(files),
               exports=("pt2", "onnx", "safetensors"))
    report = run_prune_job(job, tmp_path, progress=lambda s, f: stages.append(s),
                           detail=lambda s, info: details.append(info))
    assert REPORT_KEYS <= set(report)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert REPORT_KEYS <= set(on_disk) and (tmp_path / "report.html").is_file()
    assert report["flops_reduction"] == pytest.approx(0.3, abs=0.01)
    _verified(report, {"model.pt2", "model.onnx", "weights.safetensors", "plan.json"})
    # random init: the dense model is at chance; one short epoch on the easy task must beat it clearly
    assert report["accuracy_after"] > max(report["accuracy_before"], 0.5)
    assert report["finetune"]["history"][0]["epoch"] == 1 and "finetune" in report["timings"]
    assert "finetune" in stages and any("eta_s" in d for d in details)
    assert not (tmp_path / "finetune_ckpt").exists()  # default checkpoints are not artifacts


def test_interrupted_finetune_resumes_with_same_out_dir(files: dict[str, Path], tmp_path: Path) -> None:
    job = _job(files, method="l1", target_flops_reduction=0.3, finetune=_ft(files, epochs=2, train_samples=64),
               eval_samples=32, calib=None)
    stop = {"now": False}

    def detail(_stage: str, info: dict[str, Any]) -> None:
        if "train_loss" in info and info["epoch"] == 1:  # epoch 1 done and checkpointed: the worker "dies"
            stop["now"] = True

    with pytest.raises(JobCancelled):
        run_prune_job(job, tmp_path, should_cancel=lambda: stop["now"], detail=detail)
    state = json.loads((tmp_path / "finetune_ckpt" / "state.json").read_text())
    assert state["epoch"] == 1
    report = run_prune_job(job, tmp_path)
    assert report["finetune"]["resumed_from"] == 1
    assert [h["epoch"] for h in report["finetune"]["history"]] == [1, 2]


def test_cancel_before_work_raises(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(JobCancelled):
        run_prune_job(_job(files, method="l1", pruning_ratio=0.5), tmp_path, should_cancel=lambda: True)


def test_dcff_trains_and_exports(files: dict[str, Path], tmp_path: Path) -> None:
    details: list[tuple[str, dict[str, Any]]] = []
    job = _job(files, method="dcff", target_flops_reduction=0.4, options={"t_start": 10.0},
               finetune=_ft(files, train_samples=64), eval_samples=32)
    report = run_prune_job(job, tmp_path, detail=lambda s, i: details.append((s, i)))
    assert report["method"] == "dcff" and report["flops_reduction"] == pytest.approx(0.4, abs=0.02)
    _verified(report, {"weights.safetensors", "plan.json"})  # plan.json: rebuilt with apply_plan + weights
    layers = report["dcff"]["layers"]
    assert layers and all(v["kept"] < v["channels"] for v in layers.values())
    assert report["dcff"]["temperatures"] == [10.0]
    assert report["finetune"]["history"][0]["epoch"] == 1 and "train" in report["timings"]
    train = [info for stage, info in details if stage == "train"]
    assert train and "eta_s" in train[-1]
    rebuilt = load_pruned(tmp_path / "plan.json", tmp_path / "weights.safetensors")
    kept = {r["name"]: r["channels_after"] for r in report["per_layer"]}
    assert all(rebuilt.get_submodule(n).out_channels == kept[n] for n in layers)


def test_dcff_needs_training_data(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="training data"):
        run_prune_job(_job(files, method="dcff", pruning_ratio=0.5, eval=None), tmp_path)


def test_ssc_trains_and_exports(files: dict[str, Path], tmp_path: Path) -> None:
    job = _job(files, method="ssc", target_flops_reduction=0.5, options={"p": 1},
               finetune=_ft(files, train_samples=64), eval=None)
    report = run_prune_job(job, tmp_path)
    assert report["method"] == "ssc" and report["flops_reduction"] == pytest.approx(0.5, abs=0.05)
    assert report["ssc"]["layers"] and all(v["p"] == 1 for v in report["ssc"]["layers"].values())
    assert report["params_after"] < report["params_before"]
    _verified(report, {"weights.safetensors", "plan.json"})  # plan.json: rebuilt with load_ssc
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["format"] == SSC_PLAN_FORMAT and len(plan["layers"]) == len(report["ssc"]["layers"])
    model = load_ssc(plan, tmp_path / "weights.safetensors")
    assert model(torch.randn(2, 3, HW, HW)).shape == (2, 10)


def _profile(path: Path, device_name: str = "test device", arch: str = "cifar_resnet20",
             input_size: tuple[int, ...] = (3, HW, HW)) -> Path:
    """A synthetic profile of cifar_resnet20: each inner group saves time in proportion to the channels it
    removes, each block 6% of the dense time when dropped."""
    from datetime import datetime, timezone

    from simprune.profiles import BlockLatency, DeviceProfile, GroupLatency, ProfileEnvironment, save_profile
    from simprune.pruning.blocks import removable_blocks
    from simprune.pruning.groups import discover_groups

    model = build_model("cifar_resnet20")
    _, specs, _ = discover_groups(model, torch.zeros(1, 3, HW, HW))
    dense = 10.0
    groups = {s.name: GroupLatency(channels=s.n_channels, ladder=[
        (k, dense - 0.9 * (1 - k / s.n_channels)) for k in (s.n_channels // 4, s.n_channels // 2)]) for s in specs}
    blocks = {b.name: BlockLatency(ms=dense - 0.6, groups=list(b.groups)) for b in removable_blocks(model)}
    env = ProfileEnvironment(device_type="cpu", device_name=device_name, threads=torch.get_num_threads(),
                             torch=torch.__version__)
    return save_profile(DeviceProfile(arch=arch, input_size=input_size, batch_size=1, environment=env,
                                      created=datetime.now(timezone.utc), dense_ms=dense, fixed_ms=1.0, round_to=4,
                                      groups=groups, blocks=blocks), path)


def test_report_measures_latency_and_plots_it(files: dict[str, Path], tmp_path: Path) -> None:
    job = _job(files, method="l1", target_flops_reduction=0.5, eval=None, measure_latency=True,
               latency_batch_sizes=[1, 4], latency_budget_s=30, exports=("onnx",))
    report = run_prune_job(job, tmp_path)
    latency = report["latency"]
    assert {(r["runtime"], r["batch"]) for r in latency["rows"]} == {("eager", 1), ("eager", 4),
                                                                     ("onnxruntime", 1), ("onnxruntime", 4)}
    assert latency["flops_ratio"] == pytest.approx(report["flops_before"] / report["flops_after"], rel=1e-3)
    assert latency["environment"]["device_type"] == "cpu" and latency["threads"] >= 1
    assert all(r["speedup"] > 0 and "efficiency" in r for r in latency["rows"])
    assert isinstance(report["warnings"], list) and "latency.png" in report["plots"]
    assert "latency" in report["timings"]
    html = (tmp_path / "report.html").read_text()
    assert "<h2>Latency</h2>" in html and "onnxruntime" in html


def test_target_speedup_with_a_profile_file(files: dict[str, Path], tmp_path: Path) -> None:
    from simprune.latency import device_name

    profile = _profile(tmp_path / "profile.json", device_name=device_name("cpu"))
    job = _job(files, method="l1", target_speedup=1.5, profile=profile, eval=None, measure_latency=True,
               latency_batch_sizes=[1], latency_budget_s=10)
    report = run_prune_job(job, tmp_path / "out")
    assert report["predicted_speedup"] >= 1.5 and report["round_to"] == 4
    target = report["latency_target"]
    assert target["target_speedup"] == 1.5 and target["profile_source"] == "file" and target["same_device"]
    assert report["measured_speedup"] == target["measured_speedup"] and report["measured_speedup"] > 0
    assert "Latency target" in (tmp_path / "out" / "report.html").read_text()
    rebuilt = load_pruned(tmp_path / "out" / "plan.json", tmp_path / "out" / "weights.safetensors")
    assert rebuilt(torch.randn(2, 3, HW, HW)).shape == (2, 10)


def test_worker_profile_from_the_cache_and_mismatched_profiles_refused(files: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    from simprune.profiling import cache_key

    cache = tmp_path / "cache"
    cache.mkdir()
    _profile(cache / cache_key("cifar_resnet20", (3, HW, HW), 1, "cpu", torch.get_num_threads()))
    job = _job(files, method="l1", target_speedup=1.3, latency_profile="worker", profile_cache=cache, eval=None)
    report = run_prune_job(job, tmp_path / "out")
    assert report["latency_target"]["profile_source"] == "worker" and report["predicted_speedup"] >= 1.3
    assert report["measured_speedup"] is None  # measure_latency is off in these jobs
    for bad, needle in ((_profile(tmp_path / "a.json", arch="cifar_resnet32"), "architecture 'cifar_resnet32'"),
                        (_profile(tmp_path / "b.json", input_size=(3, 32, 32)), "input size (3, 32, 32)")):
        with pytest.raises(InputError, match=re.escape(needle)):
            run_prune_job(_job(files, method="l1", target_speedup=1.3, profile=bad, eval=None), tmp_path / "bad")


def test_classifier_that_is_a_conv_keeps_the_checkpoint_class_count(tmp_path: Path) -> None:
    # squeezenet's classifier is a 1x1 conv: the class count comes from the checkpoint, so the plan rebuilds a
    # 10-class model and the safetensors + plan export verifies
    import torchvision

    model = torchvision.models.squeezenet1_1(num_classes=10)
    weights = tmp_path / "sq.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    job = PruneJob.build(arch="torchvision/squeezenet1_1", weights=weights, input_size=(3, 64, 64), device="cpu",
                         method="l1", pruning_ratio=0.2, exports=("safetensors",), measure_latency=False)
    report = run_prune_job(job, tmp_path / "out")
    assert report["num_classes"] == 10
    assert next(e for e in report["exports"] if e["format"] == "plan")["verified"]
