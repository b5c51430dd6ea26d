"""ONNX uploads over the API (no architecture name; the dry run stored with the model; bad files refused with
nothing stored; a job on the upload run by the worker, its pruned ONNX downloaded and run in onnxruntime) and the
paginated, searchable architecture catalogue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
from onnx_nets import HW, NETS, NUM_CLASSES, export_onnx, randomize_bn
from service_helpers import make_embedded, new_key, stored_files
from sqlalchemy import select

from app.core.db import session_scope
from app.main import create_app
from app.models import Model

PROBLEM = "application/problem+json"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_embedded(tmp_path / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {new_key(settings)}"
        client.settings = settings  # type: ignore[attr-defined]
        yield client


TIMM_NETS = ("resnet10t", "efficientnet_lite0", "mobilenetv3_small_050", "convnext_atto", "regnetx_002",
             "ghostnet_050")
"""One small timm model per family the issue names (5 classes), exported to ONNX like the others."""


@pytest.fixture(scope="module")
def timm_onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import timm

    root = tmp_path_factory.mktemp("timm_onnx")
    torch.manual_seed(0)
    return {f"timm_{name}": export_onnx(randomize_bn(timm.create_model(name, pretrained=False, num_classes=5)),
                                        root / f"{name}.onnx") for name in TIMM_NETS}


@pytest.fixture
def onnx_file(onnx_files: dict[str, Path]) -> Path:
    return onnx_files["mobilenet_v3_small"]


def _upload(api: TestClient, path: Path, **fields: str) -> Any:
    with open(path, "rb") as fh:
        return api.post("/v1/models", data=fields, files={"file": (path.name, fh)})


def _problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    return resp.json()


def test_onnx_upload_without_arch_stores_the_dry_run(api: TestClient, onnx_file: Path) -> None:
    resp = _upload(api, onnx_file)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["arch"].startswith("onnx/") and body["num_classes"] == 10 and body["input_size"] == [3, 32, 32]
    assert body["flops"] > 0 and body["params"] > 0
    with session_scope(api.settings.database_url) as s:  # type: ignore[attr-defined]
        dry = s.scalars(select(Model.dry_run).where(Model.id == body["id"])).one()
    assert dry["prunable_groups"] > 0 and dry["prunable_channels"] > 0 and dry["unsupported_operators"] == []
    assert any(k["reason"].startswith("classifier") for k in dry["kept_whole"])
    assert dry["operators"]["Conv"] > 10 and dry["fidelity_max_abs_diff"] < 1e-4
    assert body["dry_run"] == dry  # the model record shows it


@pytest.mark.parametrize("method", ["l1", "passive_sim"])
@pytest.mark.parametrize("name", [*NETS, *(f"timm_{n}" for n in TIMM_NETS)])
def test_onnx_job_runs_through_the_worker(api: TestClient, onnx_files: dict[str, Path],
                                          timm_onnx_files: dict[str, Path], tmp_path: Path, name: str, method: str,
                                          one_thread_module: None) -> None:
    """Each network uploaded as ONNX (no architecture name), pruned to 30% FLOPs by the worker with calibration
    data, every export verified and the plan rebuilt from the uploaded file; with l1 the pruned ONNX is downloaded
    and run in onnxruntime against the dense ONNX's input signature (the similarity job exports safetensors only:
    an ONNX export of the converted graph is most of a job's time, and the l1 job covers it)."""
    import onnxruntime as ort

    from worker.tasks import execute_job

    path = {**onnx_files, **timm_onnx_files}[name]
    classes = NUM_CLASSES.get(name, 5)
    resp = _upload(api, path)
    assert resp.status_code == 201, resp.text
    model = resp.json()
    assert model["num_classes"] == classes and model["input_size"] == [3, HW, HW]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.integers(0, 255, (24, HW, HW, 3), dtype=np.uint8),
             y=np.arange(24, dtype=np.int64) % classes)
    with open(tmp_path / "calib.npz", "rb") as fh:
        calib = api.post("/v1/datasets", files={"file": ("calib.npz", fh)}).json()
    exports = ["onnx", "safetensors"] if method == "l1" else ["safetensors"]
    accepted = api.post("/v1/jobs", json={"model_id": model["id"], "method": method, "target_flops_reduction": 0.3,
                                          "calibration_dataset_id": calib["id"], "exports": exports})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert execute_job(job_id, api.settings) == "succeeded"  # type: ignore[attr-defined]
    result = api.get(f"/v1/jobs/{job_id}").json()["result"]
    assert result["arch"] == model["arch"] and 0.27 <= result["flops_reduction"] <= 0.33, result["flops_reduction"]
    by_fmt = {e["format"]: e for e in result["exports"]}
    assert all(by_fmt[f]["verified"] is True for f in exports), by_fmt
    assert by_fmt["plan"]["verified"] is True  # the plan rebuilt the pruned model from the uploaded ONNX file
    if "onnx" not in exports:
        return
    resp = api.get(f"/v1/jobs/{job_id}/artifacts/model.onnx")
    assert resp.status_code == 200, resp.text
    (tmp_path / "pruned.onnx").write_bytes(resp.content)
    sess = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, 3, HW, HW)).astype(np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert out.shape == (2, classes) and np.isfinite(out).all()
    dense = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert dense.get_inputs()[0].shape[1:] == sess.get_inputs()[0].shape[1:]
    assert _conv_weights(tmp_path / "pruned.onnx") < 0.85 * _conv_weights(path)  # channels were removed


def _conv_weights(path: Path) -> int:
    """Elements of the Conv weights of an ONNX file (BatchNorm kept or folded, the convs are comparable)."""
    import onnx

    graph = onnx.load(str(path)).graph
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
    return sum(sizes.get(n.input[1], 0) for n in graph.node if n.op_type == "Conv")


def _tiny(path: Path, nodes: list[Any], inits: list[TensorProto], domains: dict[str, int] | None = None) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              initializer=inits)
    opsets = [helper.make_opsetid(d, v) for d, v in (domains or {"": 17}).items()]
    path.write_bytes(helper.make_model(graph, opset_imports=opsets).SerializeToString())
    return path


def _weight(**kw: Any) -> TensorProto:
    return helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.ones(12, dtype=np.float32), **kw)


def test_bad_onnx_is_refused_and_nothing_stored(api: TestClient, onnx_file: Path, tmp_path: Path) -> None:
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    ext = _weight()
    ext.ClearField("float_data")
    ext.data_location = TensorProto.EXTERNAL
    ext.external_data.add(key="location", value="/etc/shadow")
    big = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 19, 1024, 1, 1], raw_data=b"\0" * 16)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])
    cases = {
        "external data": _tiny(tmp_path / "ext.onnx", [conv], [ext]),
        "not a standard ONNX domain": _tiny(tmp_path / "custom.onnx", [helper.make_node("Evil", ["x"], ["y"],
                                                                                  domain="com.evil")], [],
                                     {"": 17, "com.evil": 1}),
        "elements": _tiny(tmp_path / "big.onnx", [conv], [big]),
        "truncated or corrupt": cut,
        "Hardmax": _tiny(tmp_path / "hardmax.onnx", [helper.make_node("Conv", ["x", "w"], ["c"]),
                                                     helper.make_node("Hardmax", ["c"], ["y"])], [_weight()]),
        "no prunable channel group": _tiny(tmp_path / "relu.onnx", [helper.make_node("Relu", ["x"], ["y"])], []),
    }
    for needle, path in cases.items():
        body = _problem(_upload(api, path), 422)
        assert needle in body["detail"], (needle, body["detail"])
        assert path.name in body["detail"] and "/tmp" not in body["detail"]
    assert stored_files(api.settings) == []  # type: ignore[attr-defined]
    assert api.get("/v1/models").json()["items"] == []


def test_architectures_are_paginated_and_searchable(api: TestClient) -> None:
    first = api.get("/v1/architectures", params={"limit": 50}).json()
    assert len(first["items"]) == 50 and first["next_offset"] == 50 and first["total"] > 1000
    assert all("verified" in a and "family" in a for a in first["items"])
    second = api.get("/v1/architectures", params={"limit": 50, "offset": 50}).json()
    assert {a["name"] for a in first["items"]}.isdisjoint(a["name"] for a in second["items"])
    found = api.get("/v1/architectures", params={"search": "GhostNet"}).json()
    assert found["items"] and all("ghostnet" in a["name"] for a in found["items"]) and found["next_offset"] is None
    verified = {a["name"]: a["verified"] for a in found["items"]}
    assert verified["timm/ghostnet_050"] and verified["timm/ghostnetv2_100"]  # timm's ghostnet module is tested
    assert not verified["timm/repghostnet_050"]  # another module (repghost), not covered by a test
    assert api.get("/v1/architectures", params={"search": "timm/resnet10t"}).json()["items"][0]["verified"]
    assert not api.get("/v1/architectures", params={"search": "torchvision/vit_b_16"}).json()["items"][0]["verified"]
    _problem(api.get("/v1/architectures", params={"limit": 0}), 422)
