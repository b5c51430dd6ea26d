"""Label-free output reconstruction: the whole pruned model fitted to the dense model's outputs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from simprune.compensation.output_recon import _schedule, augment_images, mix_images, reconstruct_outputs
from simprune.errors import JobCancelled
from simprune.pruning.phases import prune
from simprune.zoo import build_model

if TYPE_CHECKING:
    from conftest import PrunedPair


def _disagreement(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.kl_div(pruned(x).log_softmax(1), dense(x).log_softmax(1),
                                                reduction="batchmean", log_target=True))


def test_augmentation_only_shifts_and_mirrors() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = augment_images(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):  # each image is one of the 3 x 3 shifts of its input, mirrored or not
        views = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], v) or torch.equal(out[i], v.flip(-1)) for v in views)
    seen = {tuple(augment_images(x, torch.Generator().manual_seed(s))[0, 0, 0, :2].tolist()) for s in range(12)}
    assert len(seen) > 1  # random, not a fixed transform
    flat = torch.randn(4, 10)
    assert augment_images(flat, torch.Generator()) is flat
    asym = torch.randn(64, 1, 8, 8)
    for s in range(4):  # shifts only: every image is an unmirrored shift of its input
        out = augment_images(asym, torch.Generator().manual_seed(s), mirror=False)
        padded = torch.nn.functional.pad(asym, (1, 1, 1, 1))
        for i in range(len(asym)):
            assert any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(3) for dx in range(3))


def test_augmentation_choice(one_thread_module: None) -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    pruned = copy.deepcopy(dense)
    x = torch.randn(32, 1, 8, 8)
    for choice, name in ((True, "shift_flip"), (False, "none"), ("shift", "shift"), ("none", "none")):
        assert reconstruct_outputs(dense, copy.deepcopy(pruned), x, steps=2, augment=choice)["augment"] == name
    with pytest.raises(ValueError, match="unknown augmentation"):
        reconstruct_outputs(dense, pruned, x, steps=2, augment="mirror")
    for mix in ("none", "mixup", "cutmix"):
        assert reconstruct_outputs(dense, copy.deepcopy(pruned), x, steps=2, mix=mix)["mix"] == mix
    with pytest.raises(ValueError, match="unknown mixing"):
        reconstruct_outputs(dense, pruned, x, steps=2, mix="blend")
    with pytest.raises(ValueError, match="unknown checkpoint rule"):
        reconstruct_outputs(dense, pruned, x, steps=2, keep="last")
    # auto: cutmix only on fits of at least 48 passes over the 28 fitted images (batch 28: 48 steps)
    assert reconstruct_outputs(dense, copy.deepcopy(pruned), x, steps=47, batch_size=28, mix="auto")["mix"] == "none"
    assert reconstruct_outputs(dense, copy.deepcopy(pruned), x, steps=48, batch_size=28, mix="auto")["mix"] == "cutmix"
    mlp = nn.Sequential(nn.Linear(6, 3))  # not images: auto never mixes
    assert reconstruct_outputs(mlp, copy.deepcopy(mlp), torch.randn(32, 6), steps=48, batch_size=28,
                               mix="auto")["mix"] == "none"


def test_mixing_blends_images_of_the_same_batch() -> None:
    values = torch.arange(1.0, 9.0)  # 8 images, each one constant value
    x = values[:, None, None, None].expand(8, 3, 16, 16).contiguous()
    assert mix_images(x, torch.Generator(), "none") is x
    flat = torch.randn(4, 10)
    assert mix_images(flat, torch.Generator(), "cutmix") is flat
    mixed = mix_images(x, torch.Generator().manual_seed(0), "mixup")
    for i in range(8):  # a constant image between its own value and another image's, the same over the image
        assert torch.equal(mixed[i], mixed[i, 0, 0, 0].expand(3, 16, 16))
        assert float(values.min()) <= float(mixed[i, 0, 0, 0]) <= float(values.max())
    assert not torch.equal(mixed, x)
    pasted = 0
    for s in range(6):
        cut = mix_images(x, torch.Generator().manual_seed(s), "cutmix")
        for i in range(8):
            kinds = cut[i].unique()
            assert len(kinds) <= 2 and all(float(v) in values.tolist() for v in kinds)
            other = cut[i, 0] != values[i]  # the pasted pixels form one box, the same in every channel
            assert torch.equal(cut[i, 1] != values[i], other)
            if other.any():
                pasted += 1
                rows, cols = other.any(1).nonzero().flatten(), other.any(0).nonzero().flatten()
                box = other[int(rows.min()):int(rows.max()) + 1, int(cols.min()):int(cols.max()) + 1]
                assert bool(box.all()) and int(box.sum()) == int(other.sum())
    assert pasted > 24


def test_reconstruction_brings_the_outputs_closer_on_unseen_images(one_thread_module: None,
        pruned_resnet20: Callable[[int], PrunedPair]) -> None:
    dense, pruned, calib = pruned_resnet20(64)
    unseen = torch.randn(64, 3, 16, 16)
    before = _disagreement(dense, pruned, unseen)
    start = copy.deepcopy(pruned)
    flags = [p.requires_grad for p in pruned.parameters()]
    seen: list[tuple[int, int]] = []
    info = reconstruct_outputs(dense, pruned, calib, steps=60, lr=1e-3, batch_size=16, temperature=2.0,
                               progress=lambda done, total: seen.append((done, total)))
    assert info["kept"] and info["held_out_images"] == 8 and info["n_images"] == 56 and info["steps"] == 60
    capped = reconstruct_outputs(dense, copy.deepcopy(pruned), calib, steps=60, batch_size=16, max_passes=2)
    assert capped["steps"] == 7  # 2 passes over 56 images in batches of 16
    assert info["held_out_loss_after"] < info["held_out_loss_before"] and info["best_step"] > 0
    assert _disagreement(dense, pruned, unseen) < 0.8 * before
    end = reconstruct_outputs(dense, start, calib, steps=30, lr=1e-3, batch_size=16, keep="end")
    # "end": the end point is kept whenever it beats the start
    assert end["keep"] == "end" and end["best_step"] == 30 and end["kept"]
    assert end["held_out_loss_after"] == end["held_out_loss_last"] < end["held_out_loss_before"]
    assert seen[-1] == (60, 60) and not pruned.training
    assert [p.requires_grad for p in pruned.parameters()] == flags and all(p.grad is None for p in pruned.parameters())


def test_schedule_warms_up_then_decays() -> None:
    factors = [_schedule(i, 100) for i in range(100)]
    assert factors[:5] == [0.2, 0.4, 0.6, 0.8, 1.0] and factors[5] == 1.0
    assert all(a >= b for a, b in zip(factors[5:], factors[6:], strict=False)) and factors[-1] < 0.01


def test_a_fit_that_makes_held_out_agreement_worse_is_undone(one_thread_module: None,
        pruned_resnet20: Callable[[int], PrunedPair]) -> None:
    dense, pruned, calib = pruned_resnet20(64)
    state = {k: v.clone() for k, v in pruned.state_dict().items()}
    info = reconstruct_outputs(dense, pruned, calib, steps=5, lr=5.0, batch_size=16)
    last = info["held_out_loss_last"]  # None: diverged
    assert not info["kept"] and info["best_step"] == 0 and (last is None or last > info["held_out_loss_before"])
    assert info["held_out_loss_after"] == info["held_out_loss_before"]
    assert all(torch.equal(v, pruned.state_dict()[k]) for k, v in state.items())


def test_cancel_and_non_logit_outputs(one_thread_module: None,
        pruned_resnet20: Callable[[int], PrunedPair]) -> None:
    dense, pruned, calib = pruned_resnet20(64)
    with pytest.raises(JobCancelled):
        reconstruct_outputs(dense, pruned, calib, steps=5, should_cancel=lambda: True)

    class Features(nn.Module):  # a dict of feature maps, not logits: relative squared error
        def __init__(self, body: nn.Module) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"map": self.body.layer1(torch.relu(self.body.bn1(self.body.conv1(x))))}

    info = reconstruct_outputs(Features(dense), Features(pruned), calib, steps=20, lr=1e-3, batch_size=16)
    assert info["kept"] and info["held_out_loss_after"] < info["held_out_loss_before"]


def test_the_stage_runs_in_prune_and_is_reported(one_thread_module: None) -> None:
    torch.manual_seed(0)
    dense = build_model("cifar_resnet20").eval()
    calib = torch.randn(32, 3, 16, 16)
    opts = {"output_recon_steps": 8, "output_recon_batch": 8}
    _, rep = prune(dense, calib[:1], "l1", pruning_ratio=0.3, calib=calib, compensation_options=opts,
                   compensation={"lstsq": False, "fold": False, "bn": False, "output_recon": True})
    assert rep["output_recon"]["steps"] == 8 and rep["output_recon"]["n_images"] == 28
    assert "output_recon" in rep["timings"] and rep["compensation"]["output_recon"]
    _, rep = prune(dense, calib[:1], "l1", pruning_ratio=0.3, calib=calib)
    assert rep["output_recon"] == {} and not rep["compensation"]["output_recon"]
