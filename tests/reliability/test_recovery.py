"""Crash and restart tests against REAL processes and the real PostgreSQL and Redis: a worker SIGKILLed
mid-job, a Redis server killed and restarted with jobs queued, the API killed and restarted while jobs run,
cancellation and per-job time limits on a running job, and storage failing under a running job."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import FAST_RECOVERY, MotoServer, RedisServer, api_proc, s3_settings, wait_http, worker_proc
from service_helpers import LiveServer, base_overrides, free_port, new_key
from sqlalchemy import select

from app.core.config import Settings
from app.core.db import session_scope
from app.models import Artifact, Job
from simprune.client import ApiError, Client

LONG = {"epochs": 6, "batch_size": 8}  # a few seconds of fine-tuning: long enough to break things mid-way


@pytest.fixture
def pg_settings(pg_url: str, redis_url: str, tmp_path: Path) -> Settings:
    """PostgreSQL + the shared Redis (private db and queue), fast heartbeats and sweeps."""
    s = Settings(data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_url,
                 **{**base_overrides(), **FAST_RECOVERY})
    s.ensure_dirs()
    return s


def poll(c: Client, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float, logs: Callable[[], str]
         ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            j = c.get_job(job_id)
        except ApiError as exc:  # status 0: the API may be restarting
            if exc.status != 0:
                raise
            j = None
        if j is not None and until(j):
            return j
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} stuck at {j}; logs:\n{logs()}")
        time.sleep(0.2)


def in_finetune(j: dict[str, Any]) -> bool:
    assert j["status"] in ("queued", "running"), j
    return j["status"] == "running" and j["stage"] == "finetune"


def finished(j: dict[str, Any]) -> bool:
    return j["status"] in ("succeeded", "failed", "cancelled")


def upload(c: Client, files: dict[str, Path]) -> tuple[str, str]:
    return c.upload_model(files["ckpt"], arch="cifar_resnet20")["id"], c.upload_dataset(files["npz"])["id"]


def submit(c: Client, model: str, data: str | None = None, finetune: dict[str, Any] | None = None,
           **extra: Any) -> str:
    fields: dict[str, Any] = {"exports": ["safetensors"], **extra}
    if finetune:
        fields.update(calibration_dataset_id=data, finetune=finetune)
    return c.submit(model, "l1", pruning_ratio=0.3, **fields)["id"]


def job_storage_files(settings: Settings, job_id: str) -> list[str]:
    root = settings.storage_dir / "jobs" / job_id
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_worker_sigkilled_mid_job_is_requeued_and_finishes_once(pg_settings: Settings,
                                                                data_files: dict[str, Path]) -> None:
    s = pg_settings
    metrics_port = free_port()
    with LiveServer(s) as api, Client(api.url, api_key=new_key(s)) as c:
        model, data = upload(c, data_files)
        w1 = worker_proc(s, "worker1").start()
        try:
            job = submit(c, model, data, LONG)
            poll(c, job, in_finetune, 120, w1.log)
            w1.kill(signal.SIGKILL)
        finally:
            w1.stop()
        w2 = worker_proc(s.model_copy(update={"worker_metrics_port": metrics_port}), "worker2")
        with w2:
            final = poll(c, job, finished, 120, w2.log)
            scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert final["status"] == "succeeded", (final, w2.log())
    assert final["attempts"] == 2  # the killed attempt, then the re-queued one
    names = [a["name"] for a in final["artifacts"]]
    assert len(names) == len(set(names)) and "weights.safetensors" in names
    # exactly one set of artifacts, all from the second attempt, each present and intact
    with session_scope(s.database_url) as db:
        keys = list(db.scalars(select(Artifact.storage_key).where(Artifact.job_id == job)))
    assert sorted(keys) == sorted(f"jobs/{job}/2/{n}" for n in names)
    assert job_storage_files(s, job) == sorted(f"2/{n}" for n in names)
    # structured logs: JSON lines naming the job, including the sweeper's re-queue
    lines = [json.loads(line) for line in w2.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(r.get("job_id") == job and "worker lost" in r["message"] for r in lines), w2.log()
    assert any(r.get("job_id") == job and r["message"].endswith("succeeded") for r in lines)
    # the new worker's own metrics: stage durations
    assert 'simprune_job_stage_duration_seconds_count{stage="finetune"}' in scrape
    assert 'simprune_sweeper_actions_total{action="requeued"} 1.0' in scrape


def test_redis_restarted_with_jobs_queued_loses_none(pg_url: str, data_files: dict[str, Path],
                                                      tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis_srv:
        s = Settings(data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_srv.url,
                     **{**base_overrides(), **FAST_RECOVERY})
        s.ensure_dirs()
        with LiveServer(s) as api, Client(api.url, api_key=new_key(s)) as c, worker_proc(s, "worker") as w:
            model, data = upload(c, data_files)
            first = submit(c, model, data, LONG)
            poll(c, first, in_finetune, 120, w.log)
            queued = [submit(c, model) for _ in range(2)]  # wait in Redis behind the running job
            import redis

            depth = redis.Redis(port=redis_srv.port).llen(s.queue)
            assert depth == 2
            redis_srv.kill()  # non-persistent: the 2 queued messages are gone
            redis_srv.start()
            assert redis.Redis(port=redis_srv.port).llen(s.queue) == 0
            finals = [poll(c, j, finished, 150, w.log) for j in [first, *queued]]
    assert [f["status"] for f in finals] == ["succeeded"] * 3, [(f["status"], f["error"]) for f in finals]
    assert [f["attempts"] for f in finals] == [1] * 3  # re-sent, not re-run
    log = w.log_path.read_text(errors="replace")
    resent = [json.loads(line) for line in log.splitlines() if "message re-sent" in line]
    assert {r["job_id"] for r in resent} == set(queued)


def test_api_restarted_while_jobs_run_loses_nothing(pg_settings: Settings, data_files: dict[str, Path]) -> None:
    s = pg_settings
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = new_key(s)
    with worker_proc(s, "worker") as w:
        api = api_proc(s, port, "api1").start()
        try:
            wait_http(f"{url}/healthz")
            with Client(url, api_key=key) as c:
                model, data = upload(c, data_files)
                jobs = [submit(c, model, data, {"epochs": 4, "batch_size": 8}), submit(c, model)]
                poll(c, jobs[0], lambda j: j["status"] == "running", 120, w.log)
            api.kill(signal.SIGKILL)
        finally:
            api.stop()
        with api_proc(s, port, "api2") as api2:
            wait_http(f"{url}/healthz")
            with Client(url, api_key=key) as c:
                finals = [poll(c, j, finished, 150, lambda: w.log() + api2.log()) for j in jobs]
                listed = {j["id"] for j in c._json("GET", "/v1/jobs")["items"]}
    assert [f["status"] for f in finals] == ["succeeded"] * 2
    assert [f["attempts"] for f in finals] == [1, 1]
    assert set(jobs) <= listed


def test_cancel_within_seconds_and_per_job_time_limit(pg_settings: Settings, data_files: dict[str, Path]) -> None:
    s = pg_settings
    forever = {"epochs": 1000, "batch_size": 8}
    with LiveServer(s) as api, Client(api.url, api_key=new_key(s)) as c, worker_proc(s, "worker") as w:
        model, data = upload(c, data_files)
        job = submit(c, model, data, forever)
        poll(c, job, in_finetune, 120, w.log)
        t0 = time.monotonic()
        c.cancel(job)
        final = poll(c, job, finished, 30, w.log)
        cancel_s = time.monotonic() - t0
        assert final["status"] == "cancelled" and final["artifacts"] == []
        assert cancel_s < 5, cancel_s
        limited = submit(c, model, data, forever, time_limit_s=4)
        final = poll(c, limited, finished, 120, w.log)
    assert final["status"] == "failed" and final["error"].startswith("time limit exceeded"), final
    assert final["artifacts"] == []
    ran = (final_dt(final["finished_at"]) - final_dt(final["started_at"]))
    assert 4 <= ran < 15, ran


def final_dt(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    try:
        server = MotoServer(tmp_path / "moto.log").start()
    except (RuntimeError, FileNotFoundError) as exc:
        pytest.skip(f"moto server unavailable: {exc}")
    yield server
    server.kill()


def test_storage_failing_under_a_running_job_fails_it_cleanly(pg_settings: Settings, moto: MotoServer,
                                                              data_files: dict[str, Path]) -> None:
    s = pg_settings.model_copy(update=s3_settings(moto, "simprune-fail"))
    with LiveServer(s) as api, Client(api.url, api_key=new_key(s)) as c, worker_proc(s, "worker") as w:
        model, data = upload(c, data_files)
        job = submit(c, model, data, {"epochs": 8, "batch_size": 8})
        poll(c, job, in_finetune, 120, w.log)
        moto.kill()  # the object store goes away before the artifacts are stored
        final = poll(c, job, finished, 120, w.log)
        assert final["status"] == "failed", final
        assert final["error"].startswith("storage error: could not store 'jobs/"), final["error"]
        assert final["artifacts"] == []
        resp = httpx.get(f"{api.url}/v1/jobs/{job}/artifacts/weights.safetensors",
                         headers={"Authorization": c._http.headers["Authorization"]})
        assert resp.status_code == 404
    with session_scope(s.database_url) as db:
        assert db.scalar(select(Job.status).where(Job.id == job)) == "failed"
        assert list(db.scalars(select(Artifact).where(Artifact.job_id == job))) == []
