"""API behaviour on both backends (embedded SQLite + SQLite broker, and PostgreSQL + Redis): uploads,
validation, auth and tenancy, jobs, idempotency, pagination, cancel, problem+json errors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_helpers import new_key, stored_files
from sqlalchemy import func, select

from app.core.config import Settings
from app.core.db import session_scope
from app.main import create_app
from app.models import Dataset, Job, Model

PROBLEM = "application/problem+json"


def assert_problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["title"] and "detail" in body
    assert "traceback" not in resp.text.lower()
    return body


def upload_model(api: TestClient, path: Path, arch: str = "cifar_resnet20", **fields: str) -> Any:
    with open(path, "rb") as fh:
        return api.post("/v1/models", data={"arch": arch, **fields}, files={"file": (path.name, fh)})


def counts(settings: Settings) -> tuple[int, int, int]:
    with session_scope(settings.database_url) as s:
        return (s.scalar(select(func.count()).select_from(Model)) or 0,
                s.scalar(select(func.count()).select_from(Dataset)) or 0,
                s.scalar(select(func.count()).select_from(Job)) or 0)


def test_health_ready_and_catalogue(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    methods = api.get("/v1/methods").json()["items"]
    assert {"l1", "qsfm"} <= {m["name"] for m in methods}
    assert all({"name", "summary", "needs_data", "options"} <= set(m) for m in methods)
    presets = {p["name"]: p for p in api.get("/v1/methods").json()["presets"]}
    assert set(presets) == {"fast", "balanced", "best", "data_free"} and presets["best"]["compensation"]["block_recon"]
    archs = {a["name"]: a for a in api.get("/v1/architectures").json()["items"]}
    assert archs["cifar_resnet20"]["input_size"] == [3, 32, 32]
    assert "/v1/jobs/{job_id}/events" in api.get("/openapi.json").json()["paths"]
    assert api.get("/docs").status_code == 200


def test_readyz_reports_a_dead_broker(tmp_path: Path) -> None:
    from service_helpers import make_embedded

    s = make_embedded(tmp_path / "d", broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(s)) as c:
        body = assert_problem(c.get("/readyz"), 503)
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"].startswith("error")


def test_model_upload_roundtrip(api: TestClient, data_files: dict[str, Path]) -> None:
    for path in (data_files["ckpt"], data_files["ckpt_pt"]):
        resp = upload_model(api, path)
        assert resp.status_code == 201, resp.text
        m = resp.json()
        assert m["arch"] == "cifar_resnet20" and m["num_classes"] == 10 and m["input_size"] == [3, 32, 32]
        assert 250_000 < m["params"] < 300_000 and 35_000_000 < m["flops"] < 45_000_000
        assert m["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert m["size"] == path.stat().st_size and m["id"].startswith("mdl_") and m["created_at"]
        assert api.get(f"/v1/models/{m['id']}").json() == m
    listed = api.get("/v1/models").json()
    assert len(listed["items"]) == 2 and listed["next_cursor"] is None
    assert len(stored_files(api.settings)) == 2
    assert api.delete(f"/v1/models/{m['id']}").status_code == 204
    assert_problem(api.get(f"/v1/models/{m['id']}"), 404)
    assert len(stored_files(api.settings)) == 1


def test_dataset_upload_roundtrip(api: TestClient, data_files: dict[str, Path]) -> None:
    with open(data_files["npz"], "rb") as fh:
        resp = api.post("/v1/datasets", files={"file": ("calib.npz", fh)})
    assert resp.status_code == 201, resp.text
    d = resp.json()
    assert d["samples"] == 40 and d["classes"] == 10 and d["format"] == "npz"
    assert api.get(f"/v1/datasets/{d['id']}").json()["id"] == d["id"]
    assert [x["id"] for x in api.get("/v1/datasets").json()["items"]] == [d["id"]]
    assert api.delete(f"/v1/datasets/{d['id']}").status_code == 204
    assert stored_files(api.settings) == []


@pytest.mark.parametrize("case", ["junk", "wrong_arch", "unknown_arch", "no_arch", "bad_num_classes",
                                  "evil_zip", "dataset_suffix"])
def test_bad_uploads_leave_nothing_behind(api: TestClient, data_files: dict[str, Path], case: str) -> None:
    before = counts(api.settings)
    if case == "junk":
        body = assert_problem(upload_model(api, data_files["junk"]), 422)
    elif case == "wrong_arch":
        body = assert_problem(upload_model(api, data_files["ckpt"], arch="cifar_resnet56"), 422)
    elif case == "unknown_arch":
        body = assert_problem(upload_model(api, data_files["ckpt"], arch="no_such_net"), 422)
        assert "cifar_resnet20" in body["detail"]
    elif case == "no_arch":
        body = assert_problem(upload_model(api, data_files["ckpt"], arch=""), 422)
    elif case == "bad_num_classes":
        body = assert_problem(upload_model(api, data_files["ckpt"], num_classes="100"), 422)
    elif case == "evil_zip":
        with open(data_files["evil_zip"], "rb") as fh:
            body = assert_problem(api.post("/v1/datasets", files={"file": ("evil.zip", fh)}), 422)
        assert "escape.png" in body["detail"] or ".." in body["detail"]
    else:
        with open(data_files["npz"], "rb") as fh:
            body = assert_problem(api.post("/v1/datasets", files={"file": ("calib.exe", fh)}), 422)
    assert body["type"] != "about:blank"
    assert counts(api.settings) == before
    assert stored_files(api.settings) == []


def test_oversize_upload_is_refused_while_streaming(settings: Settings, data_files: dict[str, Path]) -> None:
    small = settings.model_copy(update={"max_checkpoint_bytes": 100_000, "max_form_field_bytes": 1024})
    data = data_files["ckpt"].read_bytes()
    assert len(data) > 10 * 100_000
    before = counts(small)
    with TestClient(create_app(small), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {new_key(small)}"
        # declared Content-Length over the limit: refused before the body is read
        assert_problem(c.post("/v1/models", data={"arch": "cifar_resnet20"},
                              files={"file": ("big.safetensors", data)}), 413)
        # chunked body without a length: refused as soon as the file part passes the limit
        boundary = "xYzBoUnDaRy"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"arch\"\r\n\r\ncifar_resnet20\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pt\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        sent = []

        def body() -> Any:
            yield head
            for i in range(0, len(data), 65536):
                sent.append(i)
                yield data[i:i + 65536]
            yield f"\r\n--{boundary}--\r\n".encode()

        resp = c.post("/v1/models", content=body(),
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        problem = assert_problem(resp, 413)
        assert problem["limit"] == 100_000
        assert_problem(c.post("/v1/models", data={"arch": "x" * 5000},
                              files={"file": ("a.pt", b"123")}), 413)
    assert counts(small) == before
    assert stored_files(small) == []


def test_auth_is_required_and_tenants_are_isolated(api: TestClient, data_files: dict[str, Path]) -> None:
    model = upload_model(api, data_files["ckpt"]).json()
    job = api.post("/v1/jobs", json={"model_id": model["id"], "method": "l1", "pruning_ratio": 0.3}).json()
    with TestClient(create_app(api.settings), raise_server_exceptions=False) as anon:
        for method, url in (("GET", "/v1/models"), ("POST", "/v1/models"), ("GET", f"/v1/jobs/{job['id']}"),
                            ("GET", "/v1/methods")):
            resp = anon.request(method, url)
            assert_problem(resp, 401)
            assert resp.headers["www-authenticate"].startswith("Bearer")
        assert_problem(anon.get("/v1/models", headers={"Authorization": "Bearer sp_nothere_abc"}), 401)
        good = api.headers["Authorization"]
        assert_problem(anon.get("/v1/models", headers={"Authorization": good + "x"}), 401)
        anon.headers["Authorization"] = f"Bearer {new_key(api.settings, 'other')}"
        assert anon.get("/v1/models").json()["items"] == []
        assert anon.get("/v1/jobs").json()["items"] == []
        for method, url in (("GET", f"/v1/models/{model['id']}"), ("DELETE", f"/v1/models/{model['id']}"),
                            ("GET", f"/v1/jobs/{job['id']}"), ("POST", f"/v1/jobs/{job['id']}/cancel"),
                            ("GET", f"/v1/jobs/{job['id']}/events"),
                            ("GET", f"/v1/jobs/{job['id']}/artifacts/model.pt2")):
            assert_problem(anon.request(method, url), 404)
        assert_problem(anon.post("/v1/jobs", json={"model_id": model["id"], "method": "l1",
                                                   "pruning_ratio": 0.3}), 404)
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_auth_disabled_uses_the_default_tenant(settings: Settings) -> None:
    s = settings.model_copy(update={"auth_enabled": False})
    with TestClient(create_app(s)) as c:
        assert c.get("/v1/models").status_code == 200
        assert c.get("/v1/jobs").json() == {"items": [], "next_cursor": None}


def test_jobs_idempotency_validation_pagination_cancel(api: TestClient, data_files: dict[str, Path]) -> None:
    model = upload_model(api, data_files["ckpt"]).json()
    req = {"model_id": model["id"], "method": "l1", "target_flops_reduction": 0.4}
    first = api.post("/v1/jobs", json=req, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == 202, first.text
    job = first.json()
    assert first.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert job["status"] == "queued" and job["progress"] == 0 and job["artifacts"] == []
    assert job["progress_detail"] is None
    again = api.post("/v1/jobs", json=req, headers={"Idempotency-Key": "abc-1"})
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert_problem(api.post("/v1/jobs", json={**req, "target_flops_reduction": 0.5},
                            headers={"Idempotency-Key": "abc-1"}), 409)

    bad = [
        ({"model_id": model["id"], "method": "l1"}, 422),
        ({**req, "pruning_ratio": 0.2}, 422),
        ({**req, "method": "nope"}, 422),
        ({**req, "target_flops_reduction": 1.5}, 422),
        ({**req, "model_id": "mdl_missing"}, 404),
        ({**req, "calibration_dataset_id": "dst_missing"}, 404),
        ({**req, "surprise": 1}, 422),
        ({**req, "compensation": {"folding": False}}, 422),
        ({**req, "output_recon_augment": "mirror"}, 422),
        ({**req, "output_recon_mix": "blend"}, 422),
    ]
    data_methods = [m["name"] for m in api.get("/v1/methods").json()["items"] if m["needs_data"]]
    if data_methods:
        bad.append(({**req, "method": data_methods[0]}, 422))
    for body, status in bad:
        assert_problem(api.post("/v1/jobs", json=body), status)
    json_ct = {"Content-Type": "application/json"}
    assert_problem(api.post("/v1/jobs", content=b"{not json", headers=json_ct), 400)
    assert_problem(api.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/plain"}), 415)

    ids = [job["id"]] + [api.post("/v1/jobs", json=req).json()["id"] for _ in range(2)]
    page1 = api.get("/v1/jobs", params={"limit": 2}).json()
    page2 = api.get("/v1/jobs", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    assert page2["next_cursor"] is None
    assert [j["id"] for j in page1["items"] + page2["items"]] == ids[::-1]
    assert_problem(api.get("/v1/jobs", params={"cursor": "garbage!"}), 400)
    assert_problem(api.get("/v1/jobs", params={"limit": 1000}), 422)
    assert_problem(api.get("/v1/jobs", params={"status": "weird"}), 422)

    cancelled = api.post(f"/v1/jobs/{ids[1]}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert_problem(api.post(f"/v1/jobs/{ids[1]}/cancel"), 409)
    assert [j["id"] for j in api.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]] == [ids[1]]
    assert len(api.get("/v1/jobs", params={"status": "queued"}).json()["items"]) == 2
    with api.stream("GET", f"/v1/jobs/{ids[1]}/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    assert "event: progress" in text and "event: end" in text and '"cancelled"' in text
    assert_problem(api.get(f"/v1/jobs/{ids[0]}/artifacts/model.pt2"), 404)
    assert_problem(api.delete(f"/v1/models/{model['id']}"), 409)  # queued jobs still use it


def test_one_call_multipart_submit(api: TestClient, data_files: dict[str, Path]) -> None:
    with open(data_files["ckpt"], "rb") as fh:
        resp = api.post("/v1/jobs", data={"arch": "cifar_resnet20", "method": "l1", "pruning_ratio": "0.25",
                                          "options": "{}", "exports": '["pt2"]'},
                        files={"file": ("r20.safetensors", fh)}, headers={"Idempotency-Key": "mp-1"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["spec"]["pruning_ratio"] == 0.25 and job["spec"]["exports"] == ["pt2"]
    assert api.get(f"/v1/models/{job['model_id']}").json()["arch"] == "cifar_resnet20"
    form = {"arch": "cifar_resnet20", "method": "l1", "pruning_ratio": "0.25", "exports": '["pt2"]'}
    with open(data_files["ckpt"], "rb") as fh:
        again = api.post("/v1/jobs", data=form, files={"file": ("r20.safetensors", fh)},
                         headers={"Idempotency-Key": "mp-1"})
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    # the same key with another body (other fields, or another checkpoint) is a conflict, not a replay
    with open(data_files["ckpt"], "rb") as fh:
        other = api.post("/v1/jobs", data={**form, "pruning_ratio": "0.5"}, files={"file": ("r20.safetensors", fh)},
                         headers={"Idempotency-Key": "mp-1"})
    assert_problem(other, 409)
    with open(data_files["ckpt_pt"], "rb") as fh:
        assert_problem(api.post("/v1/jobs", data=form, files={"file": ("r20.pt", fh)},
                                headers={"Idempotency-Key": "mp-1"}), 409)
    assert len(api.get("/v1/models").json()["items"]) == 1
    with open(data_files["junk"], "rb") as fh:
        assert_problem(api.post("/v1/jobs", data={"arch": "cifar_resnet20", "method": "l1", "pruning_ratio": "0.25"},
                                files={"file": ("j.pt", fh)}), 422)
    with open(data_files["ckpt"], "rb") as fh:
        assert_problem(api.post("/v1/jobs", data={"arch": "cifar_resnet20", "method": "l1"},
                                files={"file": ("r20.safetensors", fh)}), 422)
    assert len(api.get("/v1/jobs").json()["items"]) == 1
    assert len(stored_files(api.settings)) == 1
