"""End to end with a real worker PROCESS (``celery -A worker.celery_app worker -P solo``), on the embedded
backend and on PostgreSQL + Redis: a job submitted over HTTP succeeds and its model.pt2 downloads and loads;
a running job is cancelled; the claim is a compare-and-set (a redelivered message is a no-op)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_helpers import LiveServer, WorkerProcess, make_embedded, new_key
from sqlalchemy import select, update

from app.core.config import Settings
from app.core.db import session_scope
from app.models import Job
from simprune.client import ApiError, Client, JobFailed


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A live API server and one worker process sharing a backend."""
    root = tmp_path_factory.mktemp(f"stack-{request.param}")
    if request.param == "embedded":
        settings = make_embedded(root / "data")
    else:
        from service_helpers import base_overrides

        pg, rd = request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url")
        settings = Settings(data_dir=root / "data", database_url=pg, broker_url=rd, **base_overrides())
        settings.ensure_dirs()
    with LiveServer(settings) as server, WorkerProcess(settings) as worker:
        yield {"settings": settings, "url": server.url, "key": new_key(settings), "worker": worker}


def wait_for(client: Client, job_id: str, worker: WorkerProcess, timeout: float = 240) -> dict[str, Any]:
    try:
        return client.wait(job_id, poll_interval=0.3, timeout=timeout, raise_on_failure=False)
    except TimeoutError:
        pytest.fail(f"job {job_id} did not finish; worker log:\n{worker.log()}")


def test_job_runs_on_a_worker_and_its_model_loads(stack: dict[str, Any], data_files: dict[str, Path],
                                                  tmp_path: Path) -> None:
    import torch

    with Client(stack["url"], api_key=stack["key"]) as c:
        model = c.upload_model(data_files["ckpt"], arch="cifar_resnet20")
        seen: list[tuple[str, str | None, float]] = []
        job = c.submit(model["id"], "l1", pruning_ratio=0.3, exports=["pt2", "safetensors"])
        try:
            job = c.wait(job["id"], poll_interval=0.2, timeout=240, raise_on_failure=True,
                         progress=lambda j: seen.append((j["status"], j["stage"], j["progress"])))
        except (JobFailed, TimeoutError) as exc:
            pytest.fail(f"{exc}\nworker log:\n{stack['worker'].log()}")
        assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["error"] is None
        assert job["attempts"] == 1 and job["started_at"] and job["finished_at"] and job["result"]
        assert any(s == "running" for s, _, _ in seen)
        progress = [p for s, _, p in seen if s == "running"]
        assert progress == sorted(progress)
        names = {a["name"] for a in job["artifacts"]}
        assert {"model.pt2", "weights.safetensors", "report.json", "plan.json"} <= names
        assert not any(n.startswith("finetune_ckpt") for n in names)
        dest = c.download(job["id"], "model.pt2", tmp_path)
        art = next(a for a in job["artifacts"] if a["name"] == "model.pt2")
        assert dest.stat().st_size == art["size"]
        pruned = torch.export.load(str(dest)).module()
        out = pruned(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10)
        result = job["result"]
        assert result["params_after"] < result["params_before"] and result["flops_after"] < result["flops_before"]
        report = json.loads(httpx.get(f"{stack['url']}/v1/jobs/{job['id']}/artifacts/report.json",
                                      headers={"Authorization": f"Bearer {stack['key']}"}).text)
        assert report == job["result"]
        # SSE on a finished job: the final state, then "end"
        with httpx.stream("GET", f"{stack['url']}/v1/jobs/{job['id']}/events",
                          headers={"Authorization": f"Bearer {stack['key']}"}, timeout=30) as resp:
            text = resp.read().decode()
        assert '"succeeded"' in text and "event: end" in text
        # a redelivered message for a finished job is a no-op
        from worker.tasks import execute_job

        assert execute_job(job["id"], stack["settings"]) == "skipped"


def test_running_job_is_cancelled(stack: dict[str, Any], data_files: dict[str, Path]) -> None:
    with Client(stack["url"], api_key=stack["key"]) as c:
        model = c.upload_model(data_files["ckpt"], arch="cifar_resnet20")
        data = c.upload_dataset(data_files["npz"])
        job = c.submit(model["id"], "l1", pruning_ratio=0.3, calibration_dataset_id=data["id"],
                       finetune={"epochs": 500, "batch_size": 8}, exports=["safetensors"])
        deadline = time.monotonic() + 180
        while (j := c.get_job(job["id"]))["status"] != "running" or j["stage"] != "finetune":
            assert j["status"] in ("queued", "running"), (j["error"], stack["worker"].log())
            if time.monotonic() > deadline:
                pytest.fail(f"job never reached fine-tuning; worker log:\n{stack['worker'].log()}")
            time.sleep(0.2)
        # training progress over the API: epoch, step and ETA
        while not (detail := c.get_job(job["id"])["progress_detail"]):
            assert time.monotonic() < deadline, "no progress_detail while fine-tuning"
            time.sleep(0.2)
        assert detail["phase"] == "finetune" and detail["epochs"] == 500 and detail["epoch"] >= 1
        # within an epoch: the batch "loss"; at an epoch's end: its "train_loss" (and "top1" with eval data)
        assert detail["eta_s"] > 0 and detail["steps"] >= detail["step"] >= 1
        assert "loss" in detail or "train_loss" in detail, detail
        assert c.cancel(job["id"])["cancel_requested"] is True
        t = time.monotonic()
        final = wait_for(c, job["id"], stack["worker"], timeout=60)
        assert final["status"] == "cancelled", final
        assert time.monotonic() - t < 30
        assert final["artifacts"] == [] and final["finished_at"]
        with pytest.raises(ApiError) as err:
            c.cancel(job["id"])
        assert err.value.status == 409 and err.value.problem["status"] == 409
    work = [p for p in stack["settings"].tmp_dir.iterdir() if p.name.startswith(job["id"])]
    assert work == []  # the job's scratch directory is gone


def test_bad_option_is_refused_at_submission_not_by_the_worker(stack: dict[str, Any],
                                                                data_files: dict[str, Path]) -> None:
    with Client(stack["url"], api_key=stack["key"]) as c:
        model = c.upload_model(data_files["ckpt"], arch="cifar_resnet20")
        before = len(c.list_jobs()["items"])
        with pytest.raises(ApiError) as err:
            c.submit(model["id"], "l1", pruning_ratio=0.3, options={"no_such_option": 1})
        assert err.value.status == 422 and "no_such_option" in str(err.value)
        assert "Traceback" not in str(err.value)
        assert len(c.list_jobs()["items"]) == before


def test_claim_is_compare_and_set(tmp_path: Path) -> None:
    from app.models import Model, Tenant
    from worker.tasks import claim

    s = make_embedded(tmp_path / "d", stale_job_after_s=60)
    with session_scope(s.database_url) as db:
        db.add(Tenant(id="t1", name="t1"))
        db.flush()
        db.add(Model(id="m1", tenant_id="t1", arch="cifar_resnet20", num_classes=10, in_channels=3,
                     input_size=[3, 32, 32], params=1, flops=1, filename="x", sha256="0", size=1, storage_key="k"))
        db.flush()
        db.add(Job(id="j1", tenant_id="t1", model_id="m1", spec={"method": "l1"}, status="queued"))
    assert claim(s, "j1") == 1  # the attempt number is the fencing token
    assert claim(s, "j1") is None  # a second delivery while running
    with session_scope(s.database_url) as db:  # the worker died: its heartbeat goes stale
        from datetime import timedelta

        from app.models import utcnow
        db.execute(update(Job).where(Job.id == "j1").values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    assert claim(s, "j1") == 2
    with session_scope(s.database_url) as db:
        assert db.scalar(select(Job.attempts).where(Job.id == "j1")) == 2
        db.execute(update(Job).where(Job.id == "j1").values(status="succeeded"))
    assert claim(s, "j1") is None
