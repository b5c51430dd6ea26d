"""ONNX uploads over the API (no architecture name; the dry run stored with the model; bad files refused with
nothing stored; a job on the upload run by the worker, its pruned ONNX downloaded and run in onnxruntime) and the
paginated, searchable architecture catalogue."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
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


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torchvision

    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=6).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return path


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
    assert body["arch"].startswith("onnx/") and body["num_classes"] == 6 and body["input_size"] == [3, 32, 32]
    assert body["flops"] > 0 and body["params"] > 0
    with session_scope(api.settings.database_url) as s:  # type: ignore[attr-defined]
        dry = s.scalars(select(Model.dry_run).where(Model.id == body["id"])).one()
    assert dry["prunable_groups"] > 0 and dry["prunable_channels"] > 0 and dry["unsupported_operators"] == []
    assert any(k["reason"].startswith("classifier") for k in dry["kept_whole"])
    assert dry["operators"]["Conv"] > 10 and dry["fidelity_max_abs_diff"] < 1e-4
    assert body["dry_run"] == dry  # the model record shows it


@pytest.mark.parametrize("method", ["l1", "passive_sim"])
def test_onnx_job_runs_through_the_worker(api: TestClient, onnx_file: Path, tmp_path: Path, method: str,
                                          one_thread_module: None) -> None:
    import onnxruntime as ort

    from worker.tasks import execute_job

    model = _upload(api, onnx_file).json()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8),
             y=np.arange(24, dtype=np.int64) % 6)
    with open(tmp_path / "calib.npz", "rb") as fh:
        calib = api.post("/v1/datasets", files={"file": ("calib.npz", fh)}).json()
    accepted = api.post("/v1/jobs", json={"model_id": model["id"], "method": method, "target_flops_reduction": 0.3,
                                          "calibration_dataset_id": calib["id"], "exports": ["onnx", "safetensors"]})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert execute_job(job_id, api.settings) == "succeeded"  # type: ignore[attr-defined]
    done = api.get(f"/v1/jobs/{job_id}").json()
    result = done["result"]
    assert result["arch"] == model["arch"] and 0.27 <= result["flops_reduction"] <= 0.33, result["flops_reduction"]
    by_fmt = {e["format"]: e for e in result["exports"]}
    assert by_fmt["onnx"]["verified"] is True and by_fmt["safetensors"]["verified"] is True
    assert by_fmt["plan"]["verified"] is True  # the plan rebuilt the pruned model from the uploaded ONNX file
    resp = api.get(f"/v1/jobs/{job_id}/artifacts/model.onnx")
    assert resp.status_code == 200, resp.text
    (tmp_path / "pruned.onnx").write_bytes(resp.content)
    sess = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert out.shape == (2, 6) and np.isfinite(out).all()
    dense = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert dense.get_inputs()[0].shape[1:] == sess.get_inputs()[0].shape[1:]
    assert len(resp.content) < onnx_file.stat().st_size  # channels were removed


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
