"""/metrics in Prometheus format (jobs by status, queue depth, upload bytes, request latency), the S3 storage
backend against a real S3-compatible server (moto's standalone server), and structured JSON logs."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from procs import MotoServer, s3_settings
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import make_embedded, new_key

from app.core.logs import JsonFormatter, current_job
from app.main import create_app
from app.storage import S3Storage, StorageError, get_storage


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_endpoint(tmp_path: Path, data_files: dict[str, Path]) -> None:
    s = make_embedded(tmp_path / "data")
    with TestClient(create_app(s)) as c:
        c.headers["Authorization"] = f"Bearer {new_key(s)}"
        with open(data_files["ckpt"], "rb") as fh:
            model = c.post("/v1/models", data={"arch": "cifar_resnet20"}, files={"file": ("m.safetensors", fh)})
        assert model.status_code == 201
        c.post("/v1/models", data={"arch": "cifar_resnet20"}, files={"file": ("junk.pt", b"junk")})
        for _ in range(2):
            assert c.post("/v1/jobs", json={"model_id": model.json()["id"], "method": "l1",
                                            "pruning_ratio": 0.3}).status_code == 202
        resp = c.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    m = samples(resp.text)
    assert m[("simprune_jobs", (("status", "queued"),))] == 2
    assert m[("simprune_jobs", (("status", "running"),))] == 0
    assert m[("simprune_queue_depth", (("queue", s.queue),))] == 2  # the embedded broker's table
    assert m[("simprune_upload_bytes_total", (("kind", "model"),))] == data_files["ckpt"].stat().st_size
    assert m[("simprune_uploads_rejected_total", (("kind", "models"),))] == 1
    key = ("simprune_http_request_duration_seconds_count",
           (("method", "POST"), ("route", "/v1/jobs"), ("status", "202")))
    assert m[key] == 2


@pytest.fixture
def moto(tmp_path: Path):  # type: ignore[no-untyped-def]
    try:
        server = MotoServer(tmp_path / "moto.log").start()
    except RuntimeError as exc:
        pytest.skip(f"moto server unavailable: {exc}")
    yield server
    server.kill()


def test_s3_storage_backend(tmp_path: Path, moto: MotoServer, data_files: dict[str, Path]) -> None:
    s = make_embedded(tmp_path / "data", **s3_settings(moto, "simprune-test"), s3_prefix="svc")
    storage = get_storage(s)
    assert isinstance(storage, S3Storage)
    src = tmp_path / "a.bin"
    src.write_bytes(b"hello" * 1000)
    storage.put_file("jobs/j1/1/a.bin", src)
    assert not src.exists()  # moved, like LocalStorage
    with storage.open("jobs/j1/1/a.bin") as fh:
        assert fh.read() == b"hello" * 1000
    assert storage.exists("jobs/j1/1/a.bin") and not storage.exists("jobs/j1/1/b.bin")
    assert "simprune-test/svc/jobs/j1/1/a.bin" in storage.url("jobs/j1/1/a.bin")
    with pytest.raises(FileNotFoundError):
        storage.open("jobs/nope")
    with pytest.raises(ValueError):
        storage.put_file("../escape", src)
    assert storage.delete_prefix("jobs/j1/1") == 1 and storage.keys() == []
    # through the API: an upload lands in the bucket and its deletion removes it
    with TestClient(create_app(s)) as c:
        c.headers["Authorization"] = f"Bearer {new_key(s)}"
        with open(data_files["ckpt"], "rb") as fh:
            m = c.post("/v1/models", data={"arch": "cifar_resnet20"}, files={"file": ("m.safetensors", fh)}).json()
        assert [k.split("/")[0] for k in storage.keys()] == ["models"]
        assert c.delete(f"/v1/models/{m['id']}").status_code == 204
    assert storage.keys() == []
    moto.kill()
    src.write_bytes(b"x")
    with pytest.raises(StorageError, match="storage error: could not store 'k'"):
        storage.put_file("k", src)


def test_json_logs_carry_the_job_id() -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("simprune.test.json")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    token = current_job.set("job_abc")
    try:
        log.info("stage %s", "prune", extra={"stage": "prune"})
    finally:
        current_job.reset(token)
        log.removeHandler(handler)
    line = json.loads(buf.getvalue())
    assert line["job_id"] == "job_abc" and line["message"] == "stage prune" and line["stage"] == "prune"
    assert line["level"] == "INFO" and line["ts"].endswith("+00:00")


def test_full_disk_fails_the_store_and_leaves_no_partial_artifacts(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import shutil

    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models import Artifact, Job, Model, Tenant
    from app.storage import LocalStorage
    from worker.tasks import _store_artifacts

    s = make_embedded(tmp_path / "data")
    with session_scope(s.database_url) as db:
        db.add(Tenant(id="t", name="t"))
        db.flush()
        db.add(Model(id="m", tenant_id="t", arch="cifar_resnet20", num_classes=10, in_channels=3,
                     input_size=[3, 32, 32], params=1, flops=1, filename="x", sha256="0", size=1, storage_key="k"))
        db.flush()
        db.add(Job(id="j", tenant_id="t", model_id="m", spec={"method": "l1"}, status="running", attempts=1))
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.json", "b.json", "c.json"):
        (out / name).write_text("{}")
    real_move, calls = shutil.move, []

    def full_disk(src: str, dst: object) -> object:
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_move(src, dst)

    monkeypatch.setattr(shutil, "move", full_disk)
    storage = LocalStorage(s.storage_dir)
    with pytest.raises(StorageError, match=r"storage error: could not store 'jobs/j/1/b.json'.*No space left"):
        _store_artifacts(s, storage, "j", 1, out, {"ok": True})
    assert [p for p in s.storage_dir.rglob("*") if p.is_file()] == []  # a.json was removed again
    with session_scope(s.database_url) as db:
        assert list(db.scalars(select(Artifact))) == []
        assert db.scalar(select(Job.status).where(Job.id == "j")) == "running"  # the caller marks it failed
