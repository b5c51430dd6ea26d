"""DCFF: selection formula, fusion, compact training and export."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from simprune.errors import InputError, JobCancelled
from simprune.finetune import FinetuneConfig
from simprune.methods.dcff import (
    FusedConv2d,
    dcff_eligible_layers,
    dcff_scores,
    dcff_select,
    dcff_temperature,
    dcff_train,
    materialise_dcff,
    prepare_dcff,
)


def _numpy_scores(w: np.ndarray, t: float) -> np.ndarray:
    """METHODS.md's formula, written out literally."""
    f = w.reshape(w.shape[0], -1).astype(np.float64)
    c = f.shape[0]
    d = np.array([[np.linalg.norm(f[j] - f[k]) for k in range(c)] for j in range(c)])
    z = -d * t
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    kl = np.array([[np.mean(p[j] * np.log(p[j] / (p[k] + 1e-7))) for k in range(c)] for j in range(c)])
    return kl.sum(1)


def test_temperature_schedule() -> None:
    assert dcff_temperature(0, 30) == pytest.approx(1.0)
    assert dcff_temperature(30, 30) == pytest.approx(1e4)
    assert dcff_temperature(3, 30) == pytest.approx(1 + (1e4 - 1) * math.tanh(1.5) / math.tanh(15.0))
    assert dcff_temperature(2, 4, t_start=2.0, t_end=10.0, k=0.5) == pytest.approx(
        2 + 8 * math.tanh(0.5) / math.tanh(1.0))


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_scores_match_formula(t: float) -> None:
    torch.manual_seed(0)
    w = torch.randn(12, 4, 3, 3) * 0.3
    ours = dcff_scores(w, t).numpy()
    ref = _numpy_scores(w.numpy(), t)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)
    keep, p = dcff_select(w, 5, t)
    assert sorted(keep.tolist()) == sorted(np.argsort(-ref, kind="stable")[:5].tolist())
    assert keep.tolist() == sorted(keep.tolist())
    assert p.shape == (5, 12) and p.dtype == w.dtype
    torch.testing.assert_close(p.sum(1), torch.ones(5))


def test_huge_temperature_gives_row_selector() -> None:
    torch.manual_seed(1)
    w = torch.randn(10, 3, 3, 3)
    keep, p = dcff_select(w, 6, 1e4)
    assert len(set(keep.tolist())) == 6
    expected = torch.zeros(6, 10)
    expected[torch.arange(6), keep] = 1.0
    torch.testing.assert_close(p, expected)
    fused = (p @ w.flatten(1)).view(6, 3, 3, 3)
    torch.testing.assert_close(fused, w[keep])


def test_huge_temperature_scores_are_finite_and_ties_keep_previous_choice() -> None:
    torch.manual_seed(2)
    w = torch.randn(8, 3, 3, 3)
    scores = dcff_scores(w, 1e4)
    assert torch.isfinite(scores).all()  # log-softmax: no 0 * log 0 = NaN where probabilities underflow
    assert float(scores.max() - scores.min()) < 1e-9  # one-hot rows: every filter equally distinct
    prev = torch.tensor([7, 0, 3])
    keep, p = dcff_select(w, 3, 1e4, prev_keep=prev)
    assert keep.tolist() == [7, 0, 3]
    torch.testing.assert_close(p.argmax(1), prev)
    keep0, _ = dcff_select(w, 3, 1e4)  # no previous choice: lowest indices among the tied
    assert keep0.tolist() == [0, 1, 2]


def test_moderate_temperature_selection_moves_with_the_weights() -> None:
    """Where the literal formula underflows (NaN) the log-domain scores still rank: a near-duplicate goes."""
    torch.manual_seed(4)
    w = torch.randn(6, 2, 3, 3)
    w[5] = w[0] + 0.01 * torch.randn(2, 3, 3)
    with np.errstate(all="ignore"):
        assert not np.isfinite(_numpy_scores(w.numpy(), 300.0)).all()
    keep, _ = dcff_select(w, 5, 300.0, prev_keep=torch.tensor([1, 2, 3, 4, 5]))
    assert not {0, 5} <= set(keep.tolist())  # one of the duplicate pair is dropped


def test_rows_stay_put_across_epochs() -> None:
    torch.manual_seed(3)
    w = torch.randn(10, 2, 3, 3) * 0.2
    keep, _ = dcff_select(w, 4, 1.0)
    outsider = next(i for i in range(10) if i not in keep.tolist())
    prev = keep.clone()
    prev[1] = outsider  # last epoch kept ``outsider`` on row 1; this epoch's set is ``keep``
    new, _ = dcff_select(w, 4, 1.0, prev_keep=prev)
    assert new.tolist() == keep.tolist()  # kept filters stay on their rows, the newcomer takes row 1
    prev2 = keep.flip(0)
    new2, _ = dcff_select(w, 4, 1.0, prev_keep=prev2)
    assert new2.tolist() == prev2.tolist()


class _Chain(nn.Module):
    """A VGG-like plain chain: three conv-BN-ReLU blocks, a max pool, flatten and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(12, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_fused_chain_shapes_gradients_and_materialisation() -> None:
    torch.manual_seed(4)
    model = _Chain()
    x = torch.randn(4, 3, 8, 8)
    assert dcff_eligible_layers(model, x[:1]) == ["features.0", "features.3", "features.7"]
    fused = prepare_dcff(model, x[:1], {"features.0": 0.5, "features.3": 0.5, "features.7": 0.25})
    assert {n: f.kept for n, f in fused.items()} == {"features.0": 4, "features.3": 6, "features.7": 12}
    # full filters, compact inputs; consumers compact
    assert fused["features.3"].weight.shape == (12, 4, 3, 3)
    assert fused["features.7"].weight.shape == (16, 6, 3, 3)
    assert model.features[4].num_features == 6 and model.head.in_features == 12 * 16
    model.train()
    model(x).sum().backward()
    for f in fused.values():  # gradients reach all C filters through P @ W
        assert (f.weight.grad.flatten(1).abs().sum(1) > 0).all()
    model.eval()
    out = model(x)
    plain = materialise_dcff(copy.deepcopy(model))
    assert not any(isinstance(m, FusedConv2d) for m in plain.modules())
    torch.testing.assert_close(plain(x), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError):
        prepare_dcff(_Chain(), x[:1], {"head": 0.5})


def _cifar_model() -> tuple[nn.Module, str]:
    try:
        from simprune.zoo import build_model

        return build_model("cifar_resnet20"), "resnet"
    except Exception:  # the zoo is optional for this test; fall back to a plain chain
        return _Chain(), "chain"


def test_dcff_train_compact_model_exports() -> None:
    torch.manual_seed(5)
    model, kind = _cifar_model()
    hw = 16 if kind == "resnet" else 8
    n = 128
    y = torch.randint(0, 5, (n,))
    x = torch.randn(n, 3, hw, hw) + y[:, None, None, None].float() * 0.2
    ds = TensorDataset(x, y)
    dense_state = copy.deepcopy(model.state_dict())
    infos: list[dict] = []
    cfg = FinetuneConfig(epochs=2, lr=0.05, batch_size=32, distill=False, schedule="step", warmup_frac=0.0)
    compact, info = dcff_train(model, ds, pruning_ratio=0.5, config=cfg, device="cpu",
                               progress=lambda s, f, i: infos.append({"stage": s, **i}))
    assert infos and infos[-1]["stage"] == "dcff"
    # the input model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, dense_state[k])
    assert not any(isinstance(m, FusedConv2d) for m in compact.modules())
    n_dense = sum(p.numel() for p in model.parameters())
    n_compact = sum(p.numel() for p in compact.parameters())
    assert n_compact < 0.75 * n_dense
    if kind == "resnet":
        assert compact.layer1[0].conv1.out_channels == 8 and compact.layer1[0].bn1.num_features == 8
        assert compact.layer3[2].conv2.in_channels == 32 and compact.layer3[2].conv2.out_channels == 64
        assert isinstance(compact.layer2[1].conv1, nn.Conv2d) and type(compact.layer2[1].conv1) is nn.Conv2d
    assert len(info["temperatures"]) == 2 and info["temperatures"][0] == pytest.approx(1.0)
    assert info["final_temperature"] == pytest.approx(dcff_temperature(1, 2))
    for layer in info["layers"].values():
        assert layer["kept"] == layer["channels"] // 2
        assert len(layer["keep_per_epoch"]) == 2 and len(set(layer["keep_final"])) == layer["kept"]
    compact.eval()
    out = compact(x[:4])
    assert out.shape == (4, 5 if kind == "chain" else 10) and torch.isfinite(out).all()
    ep = torch.export.export(compact, (x[:4],))
    torch.testing.assert_close(ep.module()(x[:4]), out, rtol=1e-5, atol=1e-5)


def test_dcff_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = _Chain()
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 5, (64,))
    ds = TensorDataset(x, y)
    cfg = FinetuneConfig(epochs=2, lr=0.05, batch_size=16, distill=False, schedule="step", warmup_frac=0.0)
    last: dict = {}
    with pytest.raises(JobCancelled):
        dcff_train(model, ds, pruning_ratio=0.5, config=cfg, device="cpu", checkpoint_dir=tmp_path,
                   progress=lambda s, f, i: last.update(i), should_cancel=lambda: last.get("epoch") == 2)
    resumed, info = dcff_train(model, ds, pruning_ratio=0.5, config=cfg, device="cpu",
                               checkpoint_dir=tmp_path)
    straight, info2 = dcff_train(model, ds, pruning_ratio=0.5, config=cfg, device="cpu")
    assert info["finetune"]["resumed_from"] == 1
    assert info["temperatures"] == pytest.approx(info2["temperatures"])
    assert {n: v["keep_per_epoch"] for n, v in info["layers"].items()} == {
        n: v["keep_per_epoch"] for n, v in info2["layers"].items()}
    torch.testing.assert_close(resumed(x[:4]), straight(x[:4]), rtol=1e-5, atol=1e-5)
