"""Routing by capability, on the embedded broker and on PostgreSQL + Redis: a fine-tuning job goes to the ``gpu``
queue while a GPU worker is alive (the ``workers`` table) and to the ``cpu`` queue otherwise; a pruning-only job
always to the ``cpu`` queue (every worker consumes it); ``device: cpu`` stays off the GPU queue; ``device: cuda``
with no GPU worker alive is failed at once, saying why, and a queued one is failed by any worker's registry
heartbeat once no GPU worker is left. Messages are read back from the real broker."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import delete, text, update

from app.core.celery import get_celery, gpu_queue, route_job
from app.core.config import Settings
from app.core.db import session_scope
from app.models import Job, WorkerNode, utcnow
from worker.registry import fail_orphaned_cuda_jobs


def depth(settings: Settings, queue: str) -> int:
    """Messages waiting in ``queue`` of the real broker (a Redis list, or the SQLite broker's table)."""
    if settings.broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(settings.broker_url)
        try:
            return int(client.llen(queue))
        finally:
            client.close()
    with get_celery(settings).connection_for_read() as conn:
        return int(conn.default_channel.session.execute(text(
            "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
            "WHERE q.name = :q AND m.visible"), {"q": queue}).scalar() or 0)


def register_worker(settings: Settings, kind: str, age_s: float = 0.0) -> str:
    """A row as a worker writes it (``worker.registry.Registration``), heart-beating ``age_s`` ago."""
    beat = utcnow() - timedelta(seconds=age_s)
    queues = [gpu_queue(settings), settings.queue] if kind == "gpu" else [settings.queue]
    wid = f"test:{kind}:{age_s}"
    with session_scope(settings.database_url) as s:
        s.execute(delete(WorkerNode))
        s.add(WorkerNode(id=wid, name=f"simprune-{kind}0@test", kind=kind, gpu="0" if kind == "gpu" else None,
                         queues=queues, started_at=beat, heartbeat_at=beat, jobs_done=0))
    return wid


def submit(api: TestClient, model_id: str, data_id: str, finetune: bool, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model_id": model_id, "method": "l1", "pruning_ratio": 0.3, **extra}
    if finetune:
        body.update(finetune={"epochs": 1}, train_dataset_id=data_id)
    resp = api.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def _uploads(api: TestClient, files: dict[str, Path]) -> tuple[str, str]:
    with open(files["ckpt"], "rb") as fh:
        model = api.post("/v1/models", data={"arch": "cifar_resnet20"}, files={"file": ("m.safetensors", fh)})
    with open(files["npz"], "rb") as fh:
        data = api.post("/v1/datasets", files={"file": ("calib.npz", fh)})
    assert model.status_code == 201 and data.status_code == 201, (model.text, data.text)
    return model.json()["id"], data.json()["id"]


def test_route_rules(settings: Settings) -> None:
    ft, prune = {"method": "l1", "finetune": {"epochs": 1}}, {"method": "l1"}
    register_worker(settings, "cpu")
    assert route_job(settings, ft) == settings.queue  # no GPU worker: training runs on a CPU worker
    assert route_job(settings, {"method": "dcff", "finetune": {"epochs": 1}}) == settings.queue
    register_worker(settings, "gpu", age_s=settings.worker_alive_after_s + 5)  # dead: heartbeat too old
    assert route_job(settings, ft) == settings.queue
    register_worker(settings, "gpu")
    assert route_job(settings, ft) == gpu_queue(settings)
    assert route_job(settings, {"method": "dcff", "finetune": {"epochs": 1}}) == gpu_queue(settings)
    assert route_job(settings, prune) == settings.queue  # pruning only: either kind of worker
    assert route_job(settings, {**ft, "device": "cpu"}) == settings.queue
    assert route_job(settings, {**prune, "device": "cuda"}) == gpu_queue(settings)


def test_submitted_jobs_land_in_the_queue_of_their_capability(api: TestClient, data_files: dict[str, Path]) -> None:
    s: Settings = api.settings  # type: ignore[attr-defined]
    model_id, data_id = _uploads(api, data_files)
    register_worker(s, "gpu")
    submit(api, model_id, data_id, finetune=True)
    assert (depth(s, gpu_queue(s)), depth(s, s.queue)) == (1, 0)
    submit(api, model_id, data_id, finetune=False)
    assert (depth(s, gpu_queue(s)), depth(s, s.queue)) == (1, 1)
    job = submit(api, model_id, data_id, finetune=True, device="cpu")
    assert (depth(s, gpu_queue(s)), depth(s, s.queue)) == (1, 2)
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    register_worker(s, "cpu")  # the GPU worker is gone
    submit(api, model_id, data_id, finetune=True)
    assert (depth(s, gpu_queue(s)), depth(s, s.queue)) == (1, 3)


def test_cuda_job_without_a_gpu_worker_says_so(api: TestClient, data_files: dict[str, Path]) -> None:
    s: Settings = api.settings  # type: ignore[attr-defined]
    model_id, data_id = _uploads(api, data_files)
    register_worker(s, "cpu")
    job = submit(api, model_id, data_id, finetune=False, device="cuda")
    assert job["status"] == "failed" and "no GPU worker is alive" in job["error"], job
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed"
    assert depth(s, gpu_queue(s)) == 0

    register_worker(s, "gpu")  # queued while a GPU worker was alive ...
    queued = submit(api, model_id, data_id, finetune=False, device="cuda")
    assert queued["status"] == "queued" and depth(s, gpu_queue(s)) == 1
    assert fail_orphaned_cuda_jobs(s) == []
    register_worker(s, "cpu")  # ... which then went away: a worker's heartbeat fails the job once it waited long
    with session_scope(s.database_url) as db:
        db.execute(update(Job).where(Job.id == queued["id"])
                   .values(enqueued_at=utcnow() - timedelta(seconds=s.worker_alive_after_s + 1)))
    assert fail_orphaned_cuda_jobs(s) == [queued["id"]]
    got = api.get(f"/v1/jobs/{queued['id']}").json()
    assert got["status"] == "failed" and "no GPU worker has been alive" in got["error"]
