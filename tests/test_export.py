"""Verified exports: pt2 / ONNX / safetensors written, read back without simprune, tampering detected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from simprune.errors import ExportMismatchError
from simprune.export import FORMATS, export_all, load_safetensors_into, max_abs_diff, onnx_session

RECORD_KEYS = {"file", "format", "bytes", "sha256", "max_abs_diff"}


class SmallResNet(nn.Module):
    """Conv-BN-ReLU stem, a residual block with a depthwise conv, pooling and a linear head."""

    def __init__(self, c: int = 8, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn_dw = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(c)
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(y + self.bn_pw(self.pw(torch.relu(self.bn_dw(self.dw(y))))))
        y = self.down(y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class PrunedLike(nn.Module):
    """Odd channel counts as a pruned net has them (13, 7), a grouped conv and a 1-channel bottleneck."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 13, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(13)
        self.c2 = nn.Conv2d(13, 7, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(7)
        self.c3 = nn.Conv2d(7, 7, 3, padding=1, groups=7)
        self.c4 = nn.Conv2d(7, 1, 1)
        self.fc = nn.Linear(7 + 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.c1(x)))
        y = torch.relu(self.bn2(self.c2(y)))
        y = y + self.c3(y)
        z = torch.cat([y, self.c4(y)], dim=1)
        return self.fc(z.mean(dim=(2, 3)))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics so a wrong or missing buffer changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


MODELS = {"small_resnet": SmallResNet, "pruned_like": PrunedLike}


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(model, example input, out dir, records) for each hand-built model, exported once per module."""
    torch.manual_seed(0)
    model = _randomise_bn(MODELS[request.param]())
    example = torch.randn(1, 3, 16, 16)
    out = tmp_path_factory.mktemp(request.param)
    plan = {"arch": request.param, "channels": {"c1": 13}}
    steps: list[tuple[str, float]] = []
    model.train()  # the export must evaluate in eval mode on a copy and leave the caller's model alone
    records = export_all(model, example, out, plan=plan, progress=lambda s, f: steps.append((s, f)))
    still_training = model.training
    model.eval()
    return model, example, out, records, (steps, still_training)


def test_records_and_files(exported) -> None:
    model, _, out, records, (steps, still_training) = exported
    by_file = {r["file"]: r for r in records}
    assert set(by_file) == {"model.pt2", "model.onnx", "weights.safetensors", "plan.json"}
    for r in records:
        assert RECORD_KEYS <= set(r), r
        path = out / r["file"]
        assert path.is_file() and r["bytes"] == path.stat().st_size > 0
        assert len(r["sha256"]) == 64 and int(r["sha256"], 16) >= 0
        assert r["max_abs_output"] > 0
    for name in ("model.pt2", "model.onnx", "weights.safetensors"):
        assert 0.0 <= by_file[name]["max_abs_diff"] <= 1e-4
    assert by_file["model.pt2"]["dynamic_batch"] is True
    assert by_file["model.onnx"]["dynamic_batch"] is True and by_file["model.onnx"]["opset"] >= 17
    assert by_file["weights.safetensors"]["verified_with"] == "deepcopy"
    assert by_file["plan.json"]["max_abs_diff"] is None and by_file["plan.json"]["verified"] is False
    assert json.loads((out / "plan.json").read_text())["channels"] == {"c1": 13}
    assert (out / "plan.json").read_text().startswith('{\n  "arch"')  # indent 2
    fractions = [f for _, f in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert still_training is True  # the caller's model was not switched to eval mode


@pytest.fixture(scope="module")
def pt2_in_fresh_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Each model's pt2 run in ONE fresh interpreter importing only torch: name -> max |diff| (or raises)."""
    torch.manual_seed(1)
    work = tmp_path_factory.mktemp("fresh")
    cases = {}
    for name, cls in MODELS.items():
        model = _randomise_bn(cls())
        export_all(model, torch.randn(1, 3, 16, 16), work / name, formats=("pt2",), n_checks=1)
        x = torch.randn(3, 3, 16, 16)
        with torch.no_grad():
            torch.save({"x": x, "y": model(x)}, work / name / "expected.pt")
        cases[name] = str(work / name)
    code = (
        "import json, sys, torch\n"
        "out = {}\n"
        f"for name, d in {cases!r}.items():\n"
        "    m = torch.export.load(d + '/model.pt2').module()\n"
        "    e = torch.load(d + '/expected.pt', weights_only=True)\n"
        "    out[name] = (m(e['x']) - e['y']).abs().max().item()\n"
        "assert 'simprune' not in sys.modules, 'simprune was imported'\n"
        "print('RESULT', json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pt2_loads_without_simprune(pt2_in_fresh_process: dict[str, float], name: str) -> None:
    assert pt2_in_fresh_process[name] <= 1e-4


def test_onnx_dynamic_batch(exported) -> None:
    import onnx

    model, example, out, _, _ = exported
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = onnx_session(out / "model.onnx")
    for batch in (1, 5):
        x = torch.randn(batch, *example.shape[1:])
        (y,) = sess.run(["logits"], {"input": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() <= 1e-4


def test_tampered_safetensors_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A weight altered on its way to disk is caught by the default (deep-copy) verification."""
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def tampering_save(tensors: dict[str, torch.Tensor], path: str, metadata=None) -> None:
        tensors = dict(tensors)
        tensors["c2.weight"] = tensors["c2.weight"] + 0.05
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", tampering_save)
    model = _randomise_bn(PrunedLike())
    with pytest.raises(ExportMismatchError, match="weights.safetensors") as info:
        export_all(model, torch.randn(1, 3, 16, 16), tmp_path, formats=("safetensors",))
    records = info.value.records
    assert [r["file"] for r in records] == ["weights.safetensors"]
    assert records[0]["max_abs_diff"] > 1e-4


def test_rebuild_callable_used_and_mismatch_detected(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(PrunedLike())
    calls: list[tuple[Path, Path]] = []

    def good_rebuild(plan_path: Path, weights_path: Path) -> nn.Module:
        calls.append((plan_path, weights_path))
        assert json.loads(plan_path.read_text()) == {"k": 1}
        return load_safetensors_into(PrunedLike(), weights_path)

    recs = export_all(
        model,
        torch.randn(2, 3, 16, 16),
        tmp_path / "ok",
        formats=("safetensors",),
        plan={"k": 1},
        rebuild=good_rebuild,
    )
    assert calls and calls[0][1].name == "weights.safetensors"
    by_file = {r["file"]: r for r in recs}
    assert by_file["weights.safetensors"]["verified_with"] == "rebuild"
    assert by_file["plan.json"]["verified"] is True and by_file["plan.json"]["max_abs_diff"] <= 1e-4

    def wrong_rebuild(plan_path: Path, weights_path: Path) -> nn.Module:
        return PrunedLike()  # fresh random weights: the plan/weights pair does not reproduce the model

    with pytest.raises(ExportMismatchError, match="weights.safetensors"):
        export_all(
            model,
            torch.randn(2, 3, 16, 16),
            tmp_path / "bad",
            formats=("safetensors",),
            plan={"k": 1},
            rebuild=wrong_rebuild,
        )
    with pytest.raises(ExportMismatchError, match="inf") as info:
        export_all(
            model,
            torch.randn(2, 3, 16, 16),
            tmp_path / "broken",
            formats=("safetensors",),
            plan={"k": 1},
            rebuild=lambda plan_path, weights_path: nn.Linear(1, 1),  # cannot even run on the input
        )
    assert "RuntimeError" in info.value.records[0]["error"]

    def failing_rebuild(plan_path: Path, weights_path: Path) -> nn.Module:
        raise KeyError("layer missing from plan")

    with pytest.raises(ExportMismatchError) as info:
        export_all(
            model,
            torch.randn(2, 3, 16, 16),
            tmp_path / "fail",
            formats=("safetensors",),
            plan={"k": 1},
            rebuild=failing_rebuild,
        )
    assert "KeyError" in info.value.records[0]["error"] and info.value.records[0]["max_abs_diff"] == float(
        "inf"
    )
    with pytest.raises(ValueError, match="plan"):
        export_all(
            model, torch.randn(1, 3, 16, 16), tmp_path / "x", formats=("safetensors",), rebuild=good_rebuild
        )


class BatchOne(nn.Module):
    """Specialises the batch dimension (``view(1, -1)``): dynamic export must fall back to static."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(1, -1))


def test_relative_tolerance(tmp_path: Path) -> None:
    """Outputs scaled to ~1e6 make float32 rounding exceed the absolute tolerance; rtol accepts it."""
    model = _randomise_bn(PrunedLike())
    with torch.no_grad():
        model.fc.weight.mul_(1e6)
    example = torch.randn(1, 3, 16, 16)
    with pytest.raises(ExportMismatchError, match=r"model.onnx: max \|diff\|") as info:
        export_all(model, example, tmp_path / "abs", formats=("onnx",), n_checks=1)
    (rec,) = info.value.records
    assert rec["max_abs_diff"] > rec["tolerance"] == 1e-4 and rec["max_abs_output"] > 1e4
    (rec,) = export_all(model, example, tmp_path / "rel", formats=("onnx",), n_checks=1, rtol=1e-5)
    assert rec["max_abs_diff"] <= rec["tolerance"] == pytest.approx(1e-4 + 1e-5 * rec["max_abs_output"])


def test_static_batch_fallback(tmp_path: Path) -> None:
    recs = export_all(BatchOne(), torch.randn(1, 3, 8, 8), tmp_path, formats=("pt2",), n_checks=2)
    assert recs[0]["dynamic_batch"] is False and recs[0]["max_abs_diff"] <= 1e-4
    m = torch.export.load(str(tmp_path / "model.pt2")).module()
    assert m(torch.randn(1, 3, 8, 8)).shape == (1, 2)


def test_max_abs_diff_and_bad_format() -> None:
    a = torch.tensor([1.0, float("nan")])
    assert max_abs_diff(a, a.clone()) == 0.0
    assert max_abs_diff(a, torch.tensor([1.0, 2.0])) == float("inf")
    assert max_abs_diff(torch.zeros(2), torch.zeros(3)) == float("inf")
    assert max_abs_diff((torch.zeros(2), torch.ones(1)), (torch.zeros(2), torch.ones(1) * 1.5)) == 0.5
    with pytest.raises(ValueError, match="unknown export format"):
        export_all(nn.Linear(2, 2), torch.randn(1, 2), Path("unused"), formats=("tflite",))
    assert set(FORMATS) == {"pt2", "onnx", "safetensors"}


def _zoo_archs() -> list[str]:
    try:
        import simprune.zoo as zoo

        return [a.name for a in zoo.list_archs()]
    except Exception:  # the zoo is optional here; the test below skips with the reason
        return []


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["cifar_resnet20", "cifar_mobilenet_v2"])
def test_zoo_exports(arch: str, tmp_path: Path) -> None:
    if arch not in _zoo_archs():
        pytest.skip(f"simprune.zoo not importable or '{arch}' not registered yet")
    from simprune.zoo import build_model

    torch.manual_seed(0)
    model = _randomise_bn(build_model(arch))
    records = export_all(model, torch.randn(1, 3, 32, 32), tmp_path, n_checks=2)
    assert [r["format"] for r in records] == ["pt2", "onnx", "safetensors"]
    for r in records:
        assert RECORD_KEYS <= set(r) and r["max_abs_diff"] <= 1e-4, r
    assert records[0]["dynamic_batch"] and records[1]["dynamic_batch"]


@pytest.mark.slow
def test_engine_plan_rebuild_roundtrip(tmp_path: Path) -> None:
    """simprune.prune's plan + weights.safetensors rebuilt by simprune.load_pruned reproduce the outputs."""
    import simprune

    if not callable(getattr(simprune, "prune", None)) or not callable(getattr(simprune, "load_pruned", None)):
        pytest.skip("simprune.prune / simprune.load_pruned not available yet")
    if "cifar_resnet20" not in _zoo_archs():
        pytest.skip("simprune.zoo not importable or 'cifar_resnet20' not registered yet")
    from simprune.zoo import build_model

    torch.manual_seed(0)
    dense = _randomise_bn(build_model("cifar_resnet20"))
    example = torch.randn(1, 3, 32, 32)
    pruned, report = simprune.prune(dense, example, method="l1", pruning_ratio=0.4)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())

    def rebuild(plan_path: Path, weights_path: Path) -> nn.Module:
        return simprune.load_pruned(plan_path, weights_path, model=build_model("cifar_resnet20"))

    from simprune.plan import make_plan

    plan = make_plan(report, arch="cifar_resnet20", input_size=(3, 32, 32))
    records = export_all(
        pruned, example, tmp_path, formats=("safetensors",), plan=plan, rebuild=rebuild, n_checks=2
    )
    by_file = {r["file"]: r for r in records}
    assert by_file["weights.safetensors"]["verified_with"] == "rebuild"
    assert by_file["plan.json"]["verified"] is True and by_file["plan.json"]["max_abs_diff"] <= 1e-4
