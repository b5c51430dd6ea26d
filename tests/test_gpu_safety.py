"""GPU memory safety and the job's ``device``, on the CPU: a training phase that runs out of GPU memory (simulated
with ``torch.cuda.OutOfMemoryError``) is retried once with half the batch size, then fails with a clear error;
``device: cuda`` without CUDA fails with one clear message; the report records the device used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import simprune.finetune as finetune_module
import simprune.methods.dcff as dcff_module
from simprune.errors import InputError
from simprune.pipeline import PruneJob, job_device, run_prune_job
from simprune.zoo import build_model

HW = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu_safety")
    torch.manual_seed(0)
    model = build_model("cifar_resnet20")
    weights = root / "resnet20.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.integers(0, 255, (48, HW, HW, 3), dtype=np.uint8),
             y=rng.integers(0, 4, 48).astype(np.int64))
    return {"weights": weights, "data": root / "data.npz"}


def _job(files: dict[str, Path], **kw: Any) -> PruneJob:
    base: dict[str, Any] = dict(arch="cifar_resnet20", weights=files["weights"], input_size=(3, HW, HW),
                                calib=files["data"], train=files["data"], calib_samples=16, batch_size=16,
                                device="cpu", exports=("safetensors",), method="l1", pruning_ratio=0.3,
                                finetune={"epochs": 1, "batch_size": 32, "distill": False, "train_samples": 32})
    base.update(kw)
    return PruneJob.build(**base)


def _oom_above(limit: int, calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make fine-tuning raise CUDA's out-of-memory error for batches larger than ``limit``."""
    real = finetune_module.finetune

    def fake(model: Any, train_ds: Any, config: Any, **kw: Any) -> Any:
        calls.append(config.batch_size)
        if config.batch_size > limit:
            for p in model.parameters():  # a partial step: the retry must start from the weights before it
                p.data.add_(1.0)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(model, train_ds, config, **kw)

    monkeypatch.setattr(finetune_module, "finetune", fake)
    monkeypatch.setattr(dcff_module, "finetune", fake)  # dcff trains through its own import


def test_oom_in_finetuning_retries_once_with_half_the_batch(files: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    _oom_above(16, calls, monkeypatch)
    report = run_prune_job(_job(files), tmp_path)
    assert calls == [32, 16]
    assert report["oom_retries"] == [{"phase": "fine-tuning", "batch_size": 32, "retry_batch_size": 16,
                                      "error": "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"}]
    assert report["finetune"]["config"]["batch_size"] == 16  # the report says what ran
    assert all(np.isfinite(h["train_loss"]) for h in report["finetune"]["history"])


def test_oom_twice_fails_with_a_clear_error(files: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    _oom_above(4, calls, monkeypatch)
    with pytest.raises(InputError, match=r"out of GPU memory while fine-tuning, also after retrying with half the "
                                         r"batch size \(32 -> 16\)"):
        run_prune_job(_job(files), tmp_path)
    assert calls == [32, 16]


def test_oom_in_a_training_method_reruns_it(files: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    _oom_above(16, calls, monkeypatch)
    report = run_prune_job(_job(files, method="dcff", pruning_ratio=0.3), tmp_path)
    assert calls[:2] == [32, 16] and report["oom_retries"][0]["phase"] == "training"


def test_job_device_rules() -> None:
    assert job_device("auto", "cuda:1") == "cuda:1"
    assert job_device("cpu", "cuda:1") == "cpu"
    assert job_device("cuda", "cuda:1") == "cuda:1"
    assert job_device("cuda", "cpu") == "cuda"
    assert job_device("auto", "auto") == "auto"


def test_report_records_the_device_and_cuda_without_cuda_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    report = run_prune_job(_job(files, finetune=None, device="cpu"), tmp_path / "a")
    assert report["device"] == "cpu" and report["device_requested"] == "cpu"
    runner = PruneJob.build(**{**_kw(files), "device": "cuda:1"})  # one device: the runner's, spec stays auto
    assert runner.device == "cuda:1" and runner.spec.device == "auto"
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the refusal is for machines without it")
    with pytest.raises(InputError, match="device 'cuda' requested but CUDA is not available"):
        run_prune_job(PruneJob.build(**{**_kw(files), "device": "cuda"}), tmp_path / "c")


def _kw(files: dict[str, Path]) -> dict[str, Any]:
    return dict(arch="cifar_resnet20", weights=files["weights"], input_size=(3, HW, HW), calib=files["data"],
                calib_samples=16, batch_size=16, exports=("safetensors",), method="l1", pruning_ratio=0.3)
