"""Fine-tuning: a damaged model recovers, distillation runs, resume after cancel, best-epoch restore."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from simprune.errors import InputError, JobCancelled
from simprune.finetune import FinetuneConfig, evaluate_top1, finetune, lr_at


def _data(n: int, seed: int) -> TensorDataset:
    """4 easy classes: class k < 3 brightens channel k, class 3 darkens every channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, 12, 12, generator=g)
    for k in range(3):
        x[y == k, k] += 1.0
    x[y == 3] -= 0.7
    return TensorDataset(x, y)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


TRAIN, EVAL = _data(512, 1), _data(256, 2)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dense() -> nn.Module:
    model = _net()
    finetune(model, TRAIN, FinetuneConfig(epochs=2, lr=0.05, batch_size=32, distill=False), device=CPU)
    assert evaluate_top1(model, EVAL, device=CPU) > 0.90
    return model


def _damage(model: nn.Module) -> nn.Module:
    """Zero half the filters of both convs (and their BN affine), as a crude 50% channel pruning."""
    bad = copy.deepcopy(model)
    with torch.no_grad():
        for conv, bn in ((bad[0], bad[1]), (bad[3], bad[4])):
            conv.weight[::2] = 0.0
            bn.weight[::2] = 0.0
            bn.bias[::2] = 0.0
    return bad


def test_lr_schedule() -> None:
    cfg = FinetuneConfig(lr=0.1, warmup_frac=0.1)
    assert lr_at(cfg, 0, 100) == pytest.approx(0.01)
    assert lr_at(cfg, 9, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 10, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 55, 100) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.5)))
    step = FinetuneConfig(lr=0.1, warmup_frac=0.0, schedule="step")
    assert [lr_at(step, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_damaged_model_recovers_in_one_epoch(dense: nn.Module) -> None:
    bad = _damage(dense)
    before = evaluate_top1(bad, EVAL, device=CPU)
    cfg = FinetuneConfig(epochs=1, lr=0.05, batch_size=32, distill=False)
    res = finetune(bad, TRAIN, cfg, eval_ds=EVAL, device=CPU)
    after = evaluate_top1(bad, EVAL, device=CPU)
    assert before < 0.90
    assert after > before + 0.10 and after > 0.95
    assert res.history[0]["top1"] == pytest.approx(after)
    assert res.best_epoch == 1 and res.resumed_from is None


def test_distillation_path(dense: nn.Module) -> None:
    bad = _damage(dense)
    before = evaluate_top1(bad, EVAL, device=CPU)
    seen: list[dict] = []
    cfg = FinetuneConfig(epochs=1, lr=0.05, batch_size=32, distill=True, distill_alpha=0.9, temperature=4.0)
    res = finetune(bad, TRAIN, cfg, teacher=dense, device=CPU,
                   progress=lambda stage, frac, info: seen.append({"stage": stage, "frac": frac, **info}))
    assert math.isfinite(res.history[0]["train_loss"])
    assert evaluate_top1(bad, EVAL, device=CPU) > before + 0.10
    assert seen[-1]["frac"] == pytest.approx(1.0) and seen[0]["stage"] == "finetune"
    assert {"epoch", "step", "eta_s"} <= set(seen[0])
    assert dense.training is False  # the teacher is only evaluated


def test_resume_after_cancel(dense: nn.Module, tmp_path: Path) -> None:
    cfg = FinetuneConfig(epochs=2, lr=0.02, batch_size=64, distill=False)
    last: dict = {}

    def cancel_in_epoch_two() -> bool:
        return last.get("epoch") == 2 and last.get("step", 0) >= 512 // 64 + 3

    start = _damage(dense)
    (tmp_path / "notes.pt").write_bytes(b"not ours")  # files the caller keeps there are left alone
    with pytest.raises(JobCancelled):
        finetune(copy.deepcopy(start), TRAIN, cfg, eval_ds=EVAL, device=CPU, checkpoint_dir=tmp_path,
                 should_cancel=cancel_in_epoch_two, progress=lambda _s, _f, info: last.update(info))
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 1 and len(state["history"]) == 1

    resumed_model = copy.deepcopy(start)  # a fresh worker: same architecture, weights from the checkpoint
    resumed = finetune(resumed_model, TRAIN, cfg, eval_ds=EVAL, device=CPU, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 1
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == state["history"][0]

    straight_model = copy.deepcopy(start)
    straight = finetune(straight_model, TRAIN, cfg, eval_ds=EVAL, device=CPU)
    assert straight.history[1]["train_loss"] == pytest.approx(resumed.history[1]["train_loss"], rel=1e-4)
    for a, b in zip(straight_model.state_dict().values(), resumed_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    again = finetune(copy.deepcopy(start), TRAIN, cfg, eval_ds=EVAL, device=CPU, checkpoint_dir=tmp_path)
    assert again.resumed_from == 2 and len(again.history) == 2  # already complete: nothing retrained
    assert (tmp_path / "notes.pt").read_bytes() == b"not ours"
    assert not (tmp_path / "model_e1.safetensors").exists()  # superseded epochs are removed
    with pytest.raises(InputError):
        finetune(copy.deepcopy(start), TRAIN, FinetuneConfig(epochs=3, lr=0.02, batch_size=64, distill=False),
                 device=CPU, checkpoint_dir=tmp_path)


def test_best_epoch_restored(dense: nn.Module, tmp_path: Path) -> None:
    model = copy.deepcopy(dense)
    cfg = FinetuneConfig(epochs=3, lr=1e-4, batch_size=64, distill=False, schedule="constant",
                         warmup_frac=0.0, max_steps_per_epoch=2)

    def sabotage(epoch: int) -> None:
        if epoch == 2:  # the last epoch starts from a wrecked classifier
            with torch.no_grad():
                model[8].weight.mul_(-1.0)

    res = finetune(model, TRAIN, cfg, eval_ds=EVAL, device=CPU, on_epoch_start=sabotage,
                   checkpoint_dir=tmp_path)
    tops = [h["top1"] for h in res.history]
    assert tops[2] < 0.50 < max(tops[:2])
    assert res.best_epoch in (1, 2) and res.best_top1 == max(tops)
    assert evaluate_top1(model, EVAL, device=CPU) == pytest.approx(res.best_top1)
    # without an eval set the last epoch is kept
    res2 = finetune(copy.deepcopy(dense), TRAIN, FinetuneConfig(epochs=1, batch_size=64, distill=False),
                    device=CPU)
    assert res2.best_epoch == 1 and res2.best_top1 is None and "top1" not in res2.history[0]
