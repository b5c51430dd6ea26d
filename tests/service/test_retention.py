"""Issue 12, operators' side, on both backends: DELETE /v1/jobs/{id} (cancels, removes artifacts, keeps an
audit row), artifact retention (SIMPRUNE_ARTIFACT_TTL_DAYS, run by the sweeper), the per-tenant storage quota,
a dataset still needed by a queued job cannot be deleted, and per-tenant limits on reads and event streams."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from service_helpers import LiveServer, make_embedded, new_key, stored_files
from test_api import assert_problem, counts, upload_model
from test_limits import healthy, state

from app.core.config import Settings
from app.core.db import session_scope
from app.main import create_app
from app.models import Artifact, Job, new_id, utcnow
from app.services.sweeper import sweep
from app.storage import get_storage


def add_artifacts(settings: Settings, job_id: str, status: str = "succeeded", finished_days_ago: float = 0,
                  names: tuple[str, ...] = ("model.pt2", "report.json")) -> list[str]:
    """Make ``job_id`` a finished job with stored artifacts (as the worker leaves it); returns the keys."""
    storage = get_storage(settings)
    keys = []
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.status, job.attempts = status, 1
        job.finished_at = utcnow() - timedelta(days=finished_days_ago)
        for name in names:
            src = settings.tmp_dir / f"{job_id}-{name}"
            src.write_bytes(b"x" * 100)
            key = f"jobs/{job_id}/1/{name}"
            storage.put_file(key, src)
            keys.append(key)
            s.add(Artifact(id=new_id("art"), job_id=job_id, name=name, size=100, sha256="0" * 64,
                           storage_key=key, content_type="application/octet-stream"))
    return keys


@pytest.fixture
def job_of(api: TestClient, data_files: dict[str, Path]) -> Any:
    model = upload_model(api, data_files["ckpt"]).json()

    def submit(**extra: Any) -> dict[str, Any]:
        resp = api.post("/v1/jobs", json={"model_id": model["id"], "method": "l1", "pruning_ratio": 0.3, **extra})
        assert resp.status_code == 202, resp.text
        return resp.json()

    return submit


def test_delete_job_cancels_removes_artifacts_and_keeps_an_audit_row(api: TestClient, job_of: Any) -> None:
    settings: Settings = api.settings  # type: ignore[attr-defined]
    queued, running, done = job_of(), job_of(), job_of()
    with session_scope(settings.database_url) as s:
        s.get(Job, running["id"]).status = "running"  # type: ignore[union-attr]
    keys = add_artifacts(settings, done["id"])
    storage = get_storage(settings)
    assert all(storage.exists(k) for k in keys)
    assert api.get(f"/v1/jobs/{done['id']}/artifacts/report.json").content == b"x" * 100

    with TestClient(create_app(settings), raise_server_exceptions=False) as other:
        other.headers["Authorization"] = f"Bearer {new_key(settings, 'other')}"
        assert_problem(other.delete(f"/v1/jobs/{done['id']}"), 404)  # another tenant's job
    assert storage.exists(keys[0])

    for job in (queued, running, done):
        assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
        body = assert_problem(api.get(f"/v1/jobs/{job['id']}"), 410)
        assert body["type"].endswith("/gone") and body["deleted_at"]
        assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204  # idempotent
    assert not any(storage.exists(k) for k in keys)
    assert_problem(api.get(f"/v1/jobs/{done['id']}/artifacts/report.json"), 410)
    assert_problem(api.post(f"/v1/jobs/{queued['id']}/cancel"), 410)
    assert_problem(api.get(f"/v1/jobs/{queued['id']}/events"), 410)
    assert api.get("/v1/jobs").json()["items"] == []
    with session_scope(settings.database_url) as s:  # the audit rows
        rows = {j.id: j for j in s.query(Job).all()}
        assert all(rows[j["id"]].deleted_at is not None for j in (queued, running, done))
        assert rows[queued["id"]].status == "cancelled" and rows[running["id"]].status == "cancelled"
        assert rows[running["id"]].cancel_requested and rows[done["id"]].status == "succeeded"
        assert s.query(Artifact).filter(Artifact.job_id == done["id"]).count() == 0
    assert_problem(api.delete("/v1/jobs/job_missing"), 404)
    healthy(api)


def test_artifact_retention(api: TestClient, job_of: Any) -> None:
    settings: Settings = api.settings  # type: ignore[attr-defined]
    old, recent = job_of(), job_of()
    old_keys = add_artifacts(settings, old["id"], finished_days_ago=3)
    recent_keys = add_artifacts(settings, recent["id"], finished_days_ago=0.5)
    assert not sweep(settings).expired  # no TTL configured: artifacts are kept forever
    ttl = settings.model_copy(update={"artifact_ttl_days": 1.0})
    assert sweep(ttl).expired == [old["id"]]
    storage = get_storage(settings)
    assert not any(storage.exists(k) for k in old_keys) and all(storage.exists(k) for k in recent_keys)
    body = assert_problem(api.get(f"/v1/jobs/{old['id']}/artifacts/model.pt2"), 410)
    assert "retention" in body["detail"]
    job = api.get(f"/v1/jobs/{old['id']}").json()
    assert job["status"] == "succeeded" and job["artifacts"] == []  # the job and its report remain
    assert api.get(f"/v1/jobs/{recent['id']}/artifacts/model.pt2").status_code == 200
    assert not sweep(ttl).expired  # nothing left to do
    healthy(api)


def test_storage_quota(settings: Settings, data_files: dict[str, Path]) -> None:
    size = data_files["ckpt"].stat().st_size
    s = settings.model_copy(update={"tenant_quota_bytes": size})
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {new_key(s)}"
        model = upload_model(c, data_files["ckpt"])
        assert model.status_code == 201, model.text
        before = state(s)
        body = assert_problem(upload_model(c, data_files["ckpt"]), 413)
        assert body["type"].endswith("/quota-exceeded") and body["quota"] == size and body["used"] == size
        with open(data_files["npz"], "rb") as fh:
            assert_problem(c.post("/v1/datasets", files={"file": ("c.npz", fh)}), 413)
        # full: no new job (its artifacts could not be stored)
        body = assert_problem(c.post("/v1/jobs", json={"model_id": model.json()["id"], "method": "l1",
                                                        "pruning_ratio": 0.3}), 409)
        assert body["type"].endswith("/quota-exceeded")
        with open(data_files["ckpt"], "rb") as fh:
            assert_problem(c.post("/v1/jobs", data={"arch": "cifar_resnet20", "method": "l1", "pruning_ratio": "0.3"},
                                  files={"file": ("m.safetensors", fh)}), 409)
        assert state(s) == before
        # another tenant has its own quota
        c.headers["Authorization"] = f"Bearer {new_key(s, 'other')}"
        assert upload_model(c, data_files["ckpt"]).status_code == 201
        assert c.get("/healthz").status_code == 200


def test_dataset_needed_by_a_queued_job_cannot_be_deleted(api: TestClient, job_of: Any,
                                                          data_files: dict[str, Path]) -> None:
    settings: Settings = api.settings  # type: ignore[attr-defined]
    with open(data_files["npz"], "rb") as fh:
        ds = api.post("/v1/datasets", files={"file": ("train.npz", fh)}).json()
    job = job_of(train_dataset_id=ds["id"], finetune={"epochs": 1})
    assert job["train_dataset_id"] == ds["id"]
    before = state(settings)
    body = assert_problem(api.delete(f"/v1/datasets/{ds['id']}"), 409)
    assert job["id"] in body["detail"]
    assert state(settings) == before and api.get(f"/v1/datasets/{ds['id']}").status_code == 200
    api.post(f"/v1/jobs/{job['id']}/cancel")
    assert api.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    healthy(api)


def test_read_rate_limit_per_tenant(settings: Settings) -> None:
    s = settings.model_copy(update={"read_burst": 3, "read_rate_per_min": 1})
    with TestClient(create_app(s), raise_server_exceptions=False) as a, \
            TestClient(create_app(s), raise_server_exceptions=False) as b:
        a.headers["Authorization"] = f"Bearer {new_key(s, 'a')}"
        b.headers["Authorization"] = f"Bearer {new_key(s, 'b')}"
        assert [a.get("/v1/jobs").status_code for _ in range(3)] == [200] * 3
        resp = a.get("/v1/models")
        body = assert_problem(resp, 429)
        assert int(resp.headers["Retry-After"]) >= 1 and body["type"].endswith("/rate-limited")
        assert "reads" in body["detail"]
        assert b.get("/v1/jobs").status_code == 200  # another tenant is unaffected
        assert a.get("/healthz").status_code == 200  # probes are not tenant reads
        assert a.get(f"/v1/jobs/{'x' * 10}").status_code == 429
        assert_problem(a.post("/v1/jobs", json={"model_id": "mdl_x", "method": "l1", "pruning_ratio": 0.3}), 404)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_event_streams_per_tenant(backend: str, tmp_path: Path, data_files: dict[str, Path],
                                  request: pytest.FixtureRequest) -> None:
    extra: dict[str, Any] = {"max_event_streams_per_tenant": 2}
    if backend == "redis":
        extra["rate_limit_redis_url"] = request.getfixturevalue("redis_url")
    s = make_embedded(tmp_path / "data", **extra)
    key_a, key_b = new_key(s, "a"), new_key(s, "b")
    with LiveServer(s) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        model = http.post("/v1/models", headers={"Authorization": f"Bearer {key_a}"}, data={"arch": "cifar_resnet20"},
                          files={"file": ("m.safetensors", data_files["ckpt"].read_bytes())}).json()
        job = http.post("/v1/jobs", headers={"Authorization": f"Bearer {key_a}"},
                        json={"model_id": model["id"], "method": "l1", "pruning_ratio": 0.3}).json()
        url = f"/v1/jobs/{job['id']}/events"
        streams = [http.stream("GET", url, headers={"Authorization": f"Bearer {key_a}"}) for _ in range(2)]
        opened = [st.__enter__() for st in streams]
        assert [r.status_code for r in opened] == [200, 200]
        third = http.get(url, headers={"Authorization": f"Bearer {key_a}"})
        assert third.status_code == 429 and int(third.headers["Retry-After"]) >= 1
        assert third.json()["type"].endswith("/too-many-streams")
        # another tenant's stream limit is its own (it sees 404: not its job)
        assert http.get(url, headers={"Authorization": f"Bearer {key_b}"}).status_code == 404
        assert http.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key_a}"}).status_code == 200
        streams[0].__exit__(None, None, None)  # the server frees the slot when it notices (< 1 s)
        auth = {"Authorization": f"Bearer {key_a}"}
        deadline = time.monotonic() + 10
        while True:
            with http.stream("GET", url, headers=auth) as resp:
                if resp.status_code == 200:
                    http.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
                    assert "event: end" in resp.read().decode()  # cancelling ends the stream
                    break
            assert resp.status_code == 429 and time.monotonic() < deadline
            time.sleep(0.2)
        streams[1].__exit__(None, None, None)
    assert counts(s)[2] == 1 and len(stored_files(s)) == 1
