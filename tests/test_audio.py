"""Audio models: prune + fine-tune end to end on log-mel .npz data; passive_sim's greedy on the authors' shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from simprune.methods import get_criterion
from simprune.methods.base import ChannelGroup
from simprune.pipeline import PruneJob, run_prune_job
from simprune.zoo import build_model

DCASE_CONVS = ("features.0", "features.3", "features.8")  # 16, 16, 32 filters of 7x7
VGGISH_CONVS = ("features.0", "features.3", "features.6", "features.8", "features.11", "features.13")


def _logmel(n: int, shape: tuple[int, int], seed: int, path: Path, classes: int = 4) -> Path:
    """Float log-mel-like features (N, 1, H, W): class k raises a band of frequencies."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0.0, 1.0, (n, 1, *shape)).astype(np.float32)
    band = shape[0] // classes
    for k in range(classes):
        x[y == k, :, k * band:(k + 1) * band, :] += 1.5
    np.savez(path, x=x, y=y.astype(np.int64))
    return path


def _save(model: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _run(arch: str, shape: tuple[int, int], tmp: Path, weights: Path, **kw: Any) -> dict[str, Any]:
    train = _logmel(16, shape, 1, tmp / "train.npz")
    evals = _logmel(16, shape, 2, tmp / "eval.npz")
    job = PruneJob.build(arch=arch, weights=weights, eval=evals, calib=train, train=train, calib_samples=16,
                         batch_size=8, device="cpu", exports=("onnx", "safetensors"),
                         finetune={"epochs": 1, "lr": 1e-3, "optimizer": "adamw", "batch_size": 8,
                                   "distill": False, "weight_decay": 0.0}, **kw)
    return run_prune_job(job, tmp / "out")


def _check(report: dict[str, Any], convs: tuple[str, ...]) -> dict[str, int]:
    assert report["accuracy_before"] is not None and report["accuracy_after"] is not None
    assert report["finetune"]["history"][0]["epoch"] == 1
    for e in report["exports"]:
        assert e["max_abs_diff"] is not None and e["max_abs_diff"] < 1e-3, e
    rows = {r["name"]: r for r in report["per_layer"]}
    kept = {n: rows[n]["channels_after"] for n in convs}
    assert all(1 <= kept[n] <= rows[n]["channels_before"] for n in convs)
    return kept


def test_dcase_auto_greedy_prunes_finetunes_and_drops_duplicates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("dcase2021_task1a_baseline")
    with torch.no_grad():  # second conv: filters 8..15 duplicate 0..7, the greedy keeps one of each pair
        model.features[3].weight[8:] = model.features[3].weight[:8]
    report = _run("dcase2021_task1a_baseline", (40, 500), tmp_path, _save(model, tmp_path / "dcase.safetensors"),
                  method="passive_sim", pruning_ratio="auto")
    kept = _check(report, DCASE_CONVS)
    assert kept["features.3"] == 8
    assert report["flops_reduction"] > 0.0


def test_vggish_prunes_to_target_and_finetunes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = _save(build_model("vggish"), tmp_path / "vggish.safetensors")
    report = _run("vggish", (96, 64), tmp_path, weights, method="passive_sim", target_flops_reduction=0.3)
    _check(report, VGGISH_CONVS)
    assert report["flops_reduction"] == pytest.approx(0.3, abs=0.01)


def _group(conv: nn.Conv2d, name: str) -> ChannelGroup:
    return ChannelGroup(name=name, conv=conv, bn=None, n_channels=conv.out_channels)


SHAPES = [("dcase", 1, 16, 7), ("dcase", 16, 16, 7), ("dcase", 16, 32, 7)] + [
    ("vggish", cin, cout, 3) for cin, cout in ((1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512))]


@pytest.mark.parametrize(("net", "cin", "cout", "k"), SHAPES)
def test_greedy_kept_counts_on_author_shapes(net: str, cin: int, cout: int, k: int) -> None:
    """On random layers of the authors' shapes the greedy keeps 1..C filters, deterministically, and a layer
    with every filter duplicated keeps exactly one per pair."""
    crit = get_criterion("passive_sim")
    torch.manual_seed(cout + cin)
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    n1 = crit.auto_keep(_group(conv, f"{net}.{cin}x{cout}"))
    assert n1 is not None and 1 <= n1 <= cout
    assert crit.auto_keep(_group(conv, "again")) == n1
    sel = crit.select(_group(conv, "sel"), n1)
    assert len(sel.keep) == n1 and torch.equal(sel.keep, crit.select(_group(conv, "sel2"), n1).keep)

    half = cout // 2
    dup = nn.Conv2d(cin, cout, k, padding=k // 2)
    with torch.no_grad():
        dup.weight[half:] = dup.weight[:half] * 2.0  # scaled copies: identical prototypes (cosine)
    n_dup = crit.auto_keep(_group(dup, "dup"))
    keep = set(crit.select(_group(dup, "dup"), n_dup).keep.tolist())
    assert n_dup == half
    assert all((i in keep) != (i + half in keep) for i in range(half))
