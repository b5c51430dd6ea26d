"""ONNX models: checks on untrusted files, conversion fidelity, pruning with verified exports, plan rebuild."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, helper
from torch import nn

from simprune.errors import InputError, UnsafeInputError
from simprune.onnx_import import check_onnx, inspect_onnx, load_onnx
from simprune.pipeline import PruneJob, run_prune_job
from simprune.plan import load_pruned
from simprune.zoo import get_arch

HW = 32


class HandCNN(nn.Module):
    """Concat of two branches, depthwise separable convs and a squeeze-excite block."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 20, 1, bias=False), nn.BatchNorm2d(20), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.se_reduce, self.se_expand = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.pw = nn.Sequential(nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.dw(torch.cat([self.a(x), self.b(x)], dim=1))
        s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = self.pw(x * s)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that pruning and fidelity checks see realistic activations."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _export(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, HW, HW),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return path


NETS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(num_classes=10),
    "densenet121": lambda: torchvision.models.densenet121(num_classes=10),
    "hand_cnn": HandCNN,
}


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory, one_thread_module: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    return {name: _export(_randomize_bn(build()), root / f"{name}.onnx") for name, build in NETS.items()}


def _job(path: Path, method: str, exports: tuple[str, ...]) -> PruneJob:
    return PruneJob.build(arch="onnx", weights=path, method=method, target_flops_reduction=0.3, device="cpu",
                          input_size=(3, HW, HW), exports=exports)


def _run_pruned_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("method", ["l1", "passive_sim"])
def test_onnx_prunes_with_verified_exports(onnx_files: dict[str, Path], tmp_path: Path, name: str,
                                           method: str) -> None:
    # every export is verified against the in-memory model; the plan rebuild (from the original ONNX file through
    # plan.json) once per network, pt2 once
    exports = {"l1": ("onnx", "safetensors"), "passive_sim": ("onnx",)}[method]
    if (name, method) == ("resnet18", "l1"):
        exports = ("pt2", *exports)
    report = run_prune_job(_job(onnx_files[name], method, exports), tmp_path)
    assert report["arch"].startswith("onnx/")
    assert 0.27 <= report["flops_reduction"] <= 0.33, report["flops_reduction"]
    by_fmt = {e["format"]: e for e in report["exports"]}
    assert set(exports) <= set(by_fmt) and all(e["max_abs_diff"] is not None for e in by_fmt.values()
                                               if e["format"] != "plan")
    if "safetensors" in exports:
        assert by_fmt["plan"]["verified"] is True
        plan = json.loads((tmp_path / "plan.json").read_text())
        assert plan["source"]["format"] == "onnx" and plan["layers"]
    x = np.random.default_rng(0).standard_normal((2, 3, HW, HW)).astype(np.float32)
    out = _run_pruned_onnx(tmp_path / "model.onnx", x)
    assert out.shape == (2, 7 if name == "hand_cnn" else 10) and np.isfinite(out).all()


TIMM_NETS = ("resnet10t", "efficientnet_lite0", "mobilenetv3_small_050", "convnext_atto", "regnetx_002",
             "ghostnet_050")
"""One small timm model per family the issue names, exported to ONNX and pruned through the ONNX path."""


@pytest.mark.parametrize("name", TIMM_NETS)
def test_timm_onnx_prunes_with_verified_exports(tmp_path: Path, name: str, one_thread_module: None) -> None:
    import timm

    torch.manual_seed(0)
    path = _export(_randomize_bn(timm.create_model(name, pretrained=False, num_classes=5)), tmp_path / f"{name}.onnx")
    report = run_prune_job(_job(path, "l1", ("onnx",)), tmp_path / "out")
    assert report["arch"].startswith("onnx/")
    assert 0.27 <= report["flops_reduction"] <= 0.33, report["flops_reduction"]
    onnx_export = next(e for e in report["exports"] if e["format"] == "onnx")
    assert onnx_export["verified"] is True and onnx_export["max_abs_diff"] <= onnx_export["tolerance"]
    x = np.random.default_rng(0).standard_normal((2, 3, HW, HW)).astype(np.float32)
    out = _run_pruned_onnx(tmp_path / "out" / "model.onnx", x)
    assert out.shape == (2, 5) and np.isfinite(out).all()


def test_conversion_fidelity_and_rebuild_from_file(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    path = onnx_files["hand_cnn"]
    model = load_onnx(path)
    assert model.fidelity_max_abs_diff is not None and model.fidelity_max_abs_diff < 1e-4
    x = torch.randn(3, 3, HW, HW)
    ref = _run_pruned_onnx(path, x.numpy())
    with torch.no_grad():
        assert np.abs(model.module(x).numpy() - ref).max() < 1e-4
    run_prune_job(_job(path, "l1", ("safetensors",)), tmp_path)
    rebuilt = load_pruned(tmp_path / "plan.json", tmp_path / "weights.safetensors", onnx=path)
    with pytest.raises(InputError, match="not the ONNX file"):
        load_pruned(tmp_path / "plan.json", tmp_path / "weights.safetensors", onnx=onnx_files["resnet18"])
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(p.numel() for p in model.module.parameters())


def test_inspect_reports_the_dry_run(onnx_files: dict[str, Path]) -> None:
    info = inspect_onnx(onnx_files["hand_cnn"])
    assert info["format"] == "onnx" and info["input_size"] == [3, HW, HW] and info["num_classes"] == 7
    assert info["prunable_groups"] >= 3 and info["prunable_channels"] > 0
    assert info["flops"] > 0 and info["params"] > 0 and info["unsupported_operators"] == []
    assert any(k["reason"].startswith("classifier") for k in info["kept_whole"])
    assert info["operators"]["Concat"] == 1
    assert get_arch(info["arch"]).family == "onnx"


def test_onnx_export_of_a_zoo_model_prunes_like_the_zoo_model(tmp_path: Path) -> None:
    """Same method, same target: the same channels kept in every group, so the same pruned network (and accuracy)."""
    from simprune.methods import get_criterion
    from simprune.pruning.phases import prune
    from simprune.zoo import build_model

    torch.manual_seed(0)
    zoo = build_model("cifar_resnet20").eval()
    x = torch.randn(1, 3, 16, 16)
    path = _export(zoo, tmp_path / "r20.onnx")
    converted = load_onnx(path).module
    calib = torch.randn(32, 3, 16, 16)  # compensation too (fold, least squares, BN): the pads' constants are
    for method, data in (("l1", None), ("passive_sim", None), ("l1", calib)):  # no layers of the ONNX model
        pz, rz = prune(zoo, x, get_criterion(method), target_flops_reduction=0.3, calib=data)
        po, ro = prune(converted, x, get_criterion(method), target_flops_reduction=0.3, calib=data)
        assert [layer["keep"] for layer in rz["plan"]["layers"]] == [layer["keep"] for layer in ro["plan"]["layers"]]
        assert rz["flops_after"] == ro["flops_after"]
        xs = torch.randn(4, 3, 16, 16)
        with torch.no_grad():
            assert (pz(xs) - po(xs)).abs().max() < 1e-4


def test_checkpoint_loader_points_onnx_files_to_the_onnx_path(onnx_files: dict[str, Path]) -> None:
    from simprune.checkpoint import checkpoint_meta, load_state_dict

    assert checkpoint_meta(onnx_files["hand_cnn"])["format"] == "onnx"
    with pytest.raises(InputError, match="is an ONNX model, not a weights file"):
        load_state_dict(onnx_files["hand_cnn"])


# ------------------------------------------------------------------------------------------------ refused


def _tiny(nodes: list[Any], inits: list[TensorProto], domains: dict[str, int] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], initializer=inits)
    opsets = [helper.make_opsetid(d, v) for d, v in (domains or {"": 17}).items()]
    return helper.make_model(graph, opset_imports=opsets)


def _conv_weight(name: str = "w") -> TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [4, 3, 1, 1], np.ones(12, dtype=np.float32))


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def test_refuses_external_data(tmp_path: Path) -> None:
    w = _conv_weight()
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../../etc/passwd")
    path = _save(_tiny([helper.make_node("Conv", ["x", "w"], ["y"])], [w]), tmp_path / "ext.onnx")
    with pytest.raises(UnsafeInputError, match="external data"):
        check_onnx(path)


def test_refuses_custom_domain(tmp_path: Path) -> None:
    proto = _tiny([helper.make_node("Evil", ["x"], ["y"], domain="com.example")], [],
                  {"": 17, "com.example": 1})
    with pytest.raises(UnsafeInputError, match="com.example"):
        check_onnx(_save(proto, tmp_path / "custom.onnx"))


def test_refuses_declared_but_unbacked_2gb_initializer(tmp_path: Path) -> None:
    big = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 19, 1024, 1, 1], raw_data=b"\0" * 16)
    path = _save(_tiny([helper.make_node("Conv", ["x", "w"], ["y"])], [big]), tmp_path / "big.onnx")
    assert path.stat().st_size < 4096
    with pytest.raises(UnsafeInputError, match="elements"):
        check_onnx(path)
    small = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3, 1, 1], raw_data=b"\0" * 16)
    path = _save(_tiny([helper.make_node("Conv", ["x", "w"], ["y"])], [small]), tmp_path / "short.onnx")
    with pytest.raises(UnsafeInputError, match="not backed"):
        check_onnx(path)


def test_refuses_truncated_protobuf(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    data = onnx_files["hand_cnn"].read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        check_onnx(path)


def test_refuses_opset_out_of_range_and_oversize(tmp_path: Path) -> None:
    proto = _tiny([helper.make_node("Conv", ["x", "w"], ["y"])], [_conv_weight()], {"": 7})
    path = _save(proto, tmp_path / "old.onnx")
    with pytest.raises(InputError, match="opset 7"):
        check_onnx(path)
    with pytest.raises(UnsafeInputError, match="limit"):
        check_onnx(path, max_bytes=16)


def test_unprunable_model_names_its_operators(tmp_path: Path) -> None:
    proto = _tiny([helper.make_node("Relu", ["x"], ["y"])], [])
    with pytest.raises(InputError, match="no prunable channel group") as info:
        inspect_onnx(_save(proto, tmp_path / "relu.onnx"))
    assert info.value.operators == ["Relu"]
    proto = _tiny([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Hardmax", ["c"], ["y"])],
                  [_conv_weight()])
    with pytest.raises(InputError, match="unsupported operators Hardmax") as info:
        inspect_onnx(_save(proto, tmp_path / "hardmax.onnx"))
    assert info.value.operators == ["Hardmax"]


def test_own_converters_for_missing_activations(tmp_path: Path) -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mish", ["c"], ["m"]),
             helper.make_node("ThresholdedRelu", ["m"], ["y"], alpha=0.1)]
    path = _save(_tiny(nodes, [_conv_weight()], {"": 18}), tmp_path / "mish.onnx")
    model = load_onnx(path)  # fidelity against onnxruntime is checked on load
    assert model.fidelity_max_abs_diff is not None and model.fidelity_max_abs_diff < 1e-5


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_prunes_an_onnx_file_without_arch(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from simprune.cli import local

    cli = typer.Typer()
    local.register(cli)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["prune", "--weights", str(onnx_files["hand_cnn"]), "--method", "l1",
                                   "--target-flops-reduction", "0.3", "--export", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "model.onnx").is_file() and "onnx/" in res.output
    res = CliRunner().invoke(cli, ["prune", "--weights", str(onnx_files["hand_cnn"]), "--arch", "resnet18",
                                   "--out", str(out)])
    assert res.exit_code == 2 and "--arch is not used" in res.output
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_files["hand_cnn"].read_bytes()[:1000])
    res = CliRunner().invoke(cli, ["prune", "--weights", str(cut), "--pruning-ratio", "0.3", "--out", str(out)])
    assert res.exit_code == 2 and "truncated or corrupt" in res.output
    res = CliRunner().invoke(cli, ["archs", "--search", "resnet10"])
    assert res.exit_code == 0 and "timm/resnet10t" in res.output and " verified" in res.output
    assert "cifar_resnet56" not in res.output
