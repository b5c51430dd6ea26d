"""ONNX models: checks on untrusted files, conversion fidelity, plan rebuild, the CLI. (Each test network uploaded
over the API and pruned by the worker: tests/service/test_onnx_upload.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx_nets import HW, export_onnx

from simprune.errors import InputError, UnsafeInputError
from simprune.onnx_import import check_onnx, inspect_onnx, load_onnx
from simprune.pipeline import PruneJob, run_prune_job
from simprune.plan import load_pruned
from simprune.zoo import get_arch


def _job(path: Path, method: str, exports: tuple[str, ...]) -> PruneJob:
    return PruneJob.build(arch="onnx", weights=path, method=method, target_flops_reduction=0.3, device="cpu",
                          input_size=(3, HW, HW), exports=exports)


def _run_pruned_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


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
    path = export_onnx(zoo, tmp_path / "r20.onnx")
    converted = load_onnx(path).module
    calib = torch.randn(32, 3, 16, 16)  # compensation too (fold, least squares, BN): the pads' constants are
    for method, data in (("l1", None), ("passive_sim", None), ("l1", calib)):  # no layers of the ONNX model
        pz, rz = prune(zoo, x, get_criterion(method), target_flops_reduction=0.3, calib=data)
        po, ro = prune(converted, x, get_criterion(method), target_flops_reduction=0.3, calib=data)
        assert [layer["keep"] for layer in rz["plan"]["layers"]] == [layer["keep"] for layer in ro["plan"]["layers"]]
        assert rz["flops_after"] == ro["flops_after"]
        xs = torch.randn(4, 3, 16, 16)
        with torch.no_grad():
            ref = pz(xs)  # the ONNX export folded BN into the convs: float32 rounding differs, relatively
            assert (ref - po(xs)).abs().max() < 1e-5 * max(1.0, float(ref.abs().max())) + 1e-5


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
