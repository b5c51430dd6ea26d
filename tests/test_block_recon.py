"""Label-free block reconstruction: each pruned block is fitted to the dense block's output."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from simprune.compensation.block_recon import reconstruct_blocks

if TYPE_CHECKING:
    from conftest import PrunedPair


def _output_error(dense: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((dense(x) - pruned(x)) ** 2).mean())


def test_block_reconstruction_lowers_block_and_output_error(one_thread_module: None,
        pruned_resnet20: Callable[[int], PrunedPair]) -> None:
    dense, pruned, calib = pruned_resnet20(48)
    units = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    before = _output_error(dense, pruned, calib)
    seen: list[tuple[int, int]] = []
    info = reconstruct_blocks(dense, pruned, units, calib, n_images=48, steps=40, lr=3e-3, batch_size=16,
                              progress=lambda done, total: seen.append((done, total)))
    assert [r["unit"] for r in info["units"]] == units  # execution order, every block
    assert all(r["error_after"] <= r["error_before"] for r in info["units"])
    assert info["mean_error_after"] < 0.8 * info["mean_error_before"]
    assert _output_error(dense, pruned, calib) < before
    assert seen[-1] == (9, 9) and info["seconds"] > 0


def test_units_missing_or_without_parameters_are_skipped(one_thread_module: None,
        pruned_resnet20: Callable[[int], PrunedPair]) -> None:
    dense, pruned, calib = pruned_resnet20(48)
    info = reconstruct_blocks(dense, pruned, ["layer1.0.relu", "nope", "layer1.0"], calib, n_images=8, steps=2)
    assert [r["unit"] for r in info["units"]] == ["layer1.0"]
