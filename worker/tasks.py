"""The one task: ``run_job(job_id)``. Thin: claim, resolve ids to files, call the engine, store artifacts.

The database is the source of truth. The claim is a compare-and-set UPDATE (queued -> running, or a running
job whose heartbeat is stale because its worker died), so a redelivered message is a harmless no-op. The claim
returns the attempt number, a fencing token: every later write of this attempt (progress, heartbeat, the
final status) requires ``attempts`` to still equal it, and its artifacts live under ``jobs/<id>/<attempt>/``,
so an attempt that lost its job to the sweeper can neither overwrite nor delete the new attempt's work.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mimetypes
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.core.celery import TASK_RUN_JOB
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.logs import current_job
from app.models import Artifact, Dataset, DeviceProfile, Job, Model, new_id, utcnow
from app.services.sweeper import attempt_prefix, job_time_limit
from app.storage import LocalStorage, Storage, StorageError, get_storage
from simprune.allocator import keep_freed_memory
from simprune.errors import InputError, JobCancelled
from simprune.jobspec import JobSpec
from simprune.pipeline import PruneJob, run_prune_job
from worker import metrics
from worker.celery_app import celery_app

log = logging.getLogger("simprune.worker")

CONTENT_TYPES = {
    ".pt2": "application/octet-stream", ".onnx": "application/octet-stream",
    ".safetensors": "application/octet-stream", ".json": "application/json", ".html": "text/html",
    ".png": "image/png", ".csv": "text/csv", ".txt": "text/plain",
}


class JobTimeLimit(Exception):
    """The job ran longer than ``Settings.job_time_limit_s``."""


class LostJob(Exception):
    """This attempt no longer owns the job (the sweeper re-queued or failed it, or it was deleted)."""


def worker_id() -> str:
    """``host:pid`` of this worker process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(settings: Settings, job_id: str) -> int | None:
    """Atomically move the job to ``running`` (from queued, or from a stale running attempt while attempts are
    left); returns the new attempt number (the fencing token), or None when the job is not claimable."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.stale_job_after_s)
    me = worker_id()
    with session_scope(settings.database_url) as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.cancel_requested.is_(False),
                   or_(Job.status == "queued",
                       (Job.status == "running") & (Job.heartbeat_at < stale) & (Job.attempts < settings.max_attempts)))
            .values(status="running", started_at=now, heartbeat_at=now, stage="starting", progress=0.0,
                    progress_detail=None, attempts=Job.attempts + 1, worker_id=me)
        )
        if res.rowcount != 1:
            return None
        return s.scalar(select(Job.attempts).where(Job.id == job_id, Job.worker_id == me))


def _mine(job_id: str, attempt: int) -> Any:
    """The WHERE clause of a write by attempt ``attempt``: the job is still running this attempt."""
    return (Job.id == job_id) & (Job.status == "running") & (Job.attempts == attempt)


def _finish(settings: Settings, job_id: str, attempt: int, **values: Any) -> None:
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(_mine(job_id, attempt))
                  .values(finished_at=utcnow(), heartbeat_at=utcnow(), **values))


class Heartbeat:
    """A daemon thread writing ``heartbeat_at`` every ``heartbeat_interval_s`` while the job runs, so a job in
    a long stage without progress callbacks is not taken for dead; it dies with its process."""

    def __init__(self, settings: Settings, job_id: str, attempt: int) -> None:
        self.settings, self.job_id, self.attempt = settings, job_id, attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                with session_scope(self.settings.database_url) as s:
                    s.execute(update(Job).where(_mine(self.job_id, self.attempt)).values(heartbeat_at=utcnow()))
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next period
                log.warning("heartbeat of job %s failed: %s", self.job_id, exc, extra={"job_id": self.job_id})

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Reporter:
    """Progress callback and cancellation check for the engine, throttled so the database is not hammered."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, time_limit_s: float) -> None:
        self.settings, self.job_id, self.attempt, self.time_limit_s = settings, job_id, attempt, time_limit_s
        self.started = time.monotonic()
        self.stage_started = self.started
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._last_check = 0.0
        self._last_detail = 0.0
        self._cancel = False
        self.timed_out = False
        self.lost = False

    def progress(self, stage: str, fraction: float) -> None:
        """Write stage/progress/heartbeat (on every stage change, else at most every progress_interval_s)."""
        now = time.monotonic()
        if stage == self._last_stage and now - self._last_write < self.settings.progress_interval_s:
            return
        changed = stage != self._last_stage
        if changed:
            self.end_stage()
            log.info("job %s: stage %s", self.job_id, stage, extra={"stage": stage})
        self._last_stage, self._last_write = stage, now
        values: dict[str, Any] = {"stage": stage, "progress": min(max(float(fraction), 0.0), 1.0),
                                  "heartbeat_at": utcnow()}
        if changed:  # the previous stage's detail no longer describes what runs
            values["progress_detail"] = None
        with session_scope(self.settings.database_url) as s:
            s.execute(update(Job).where(_mine(self.job_id, self.attempt)).values(**values))

    def detail(self, phase: str, info: dict[str, Any]) -> None:
        """Store training detail (epoch, step, ETA, loss...) for the API: at most every progress_interval_s,
        always at an epoch's end (``seconds`` present) and when a count completes (``done == total``)."""
        now = time.monotonic()
        epoch_end = "seconds" in info or ("done" in info and info.get("done") == info.get("total"))
        if not epoch_end and now - self._last_detail < self.settings.progress_interval_s:
            return
        self._last_detail = now
        clean = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items()
                 if isinstance(v, int | float | str) and not (isinstance(v, float) and not math.isfinite(v))}
        with session_scope(self.settings.database_url) as s:
            s.execute(update(Job).where(_mine(self.job_id, self.attempt))
                      .values(progress_detail={"phase": phase, **clean}, heartbeat_at=utcnow()))

    def end_stage(self) -> None:
        """Record the duration of the stage that just ended (Prometheus histogram)."""
        now = time.monotonic()
        if self._last_stage is not None:
            metrics.observe_stage(self._last_stage, now - self.stage_started)
        self.stage_started = now

    def should_cancel(self) -> bool:
        """True once the user asked to cancel (DB flag) or the time limit passed (checked throttled)."""
        now = time.monotonic()
        if now - self.started > self.time_limit_s:
            self.timed_out = True
            return True
        if self._cancel or now - self._last_check < self.settings.cancel_check_interval_s:
            return self._cancel
        self._last_check = now
        with session_scope(self.settings.database_url) as s:
            row = s.execute(select(Job.cancel_requested, Job.status, Job.attempts)
                            .where(Job.id == self.job_id)).one_or_none()
            s.execute(update(Job).where(_mine(self.job_id, self.attempt)).values(heartbeat_at=utcnow()))
        # stop as well when this attempt lost the job (re-queued by the sweeper, failed, deleted)
        self.lost = row is None or row[1] != "running" or row[2] != self.attempt
        self._cancel = self.lost or bool(row[0])
        return self._cancel


def _local_file(storage: Storage, key: str, scratch: Path) -> Path:
    """A local path for ``key`` (LocalStorage: in place; other backends: copied into ``scratch``)."""
    if isinstance(storage, LocalStorage):
        return storage.local_path(key)
    dest = scratch / Path(key).name
    with storage.open(key) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def _build_job(settings: Settings, storage: Storage, job: Job, scratch: Path) -> PruneJob:
    """The engine's job: the stored spec as it was validated at submission, with the ids turned into files."""
    with session_scope(settings.database_url) as s:
        model = s.get(Model, job.model_id) if job.model_id else None
        if model is None:
            raise InputError("the job's model was deleted")
        datasets = {}
        for role, ds_id in (("calib", job.calibration_dataset_id), ("eval", job.eval_dataset_id),
                            ("train", job.train_dataset_id)):
            row = s.get(Dataset, ds_id) if ds_id else None
            if ds_id and row is None:
                raise InputError(f"the job's {role} dataset was deleted")
            datasets[role] = _local_file(storage, row.storage_key, scratch) if row is not None else None
        profile: Path | str | None = _profile_file(s, storage, job, scratch)
        s.expunge(model)
    stored = {k: v for k, v in job.spec.items() if k in JobSpec.model_fields}  # without time_limit_s
    if isinstance(stored.get("finetune"), dict):  # jobs queued before migration 0004 name their data there
        stored["finetune"] = {k: v for k, v in stored["finetune"].items() if k != "dataset_id"}
    spec = JobSpec.model_validate(stored)
    if profile is None and spec.latency_profile == "worker":
        profile = "worker"
    elif profile is None and spec.target_speedup is not None:  # the profile's row went while the job was queued
        raise InputError("the job's device profile was deleted")
    return PruneJob(
        spec=spec, arch=model.arch, weights=_local_file(storage, model.storage_key, scratch), **datasets,
        num_classes=model.num_classes, in_channels=model.in_channels, input_size=tuple(model.input_size),
        mean=tuple(model.mean) if model.mean else None, std=tuple(model.std) if model.std else None,
        device=settings.device,
        # outside out_dir (not an artifact) and stable across attempts: a re-run after a dead worker resumes
        checkpoint_dir=finetune_checkpoint_dir(settings, job.id) if spec.finetune is not None else None,
        runner={"id": worker_id(), "name": _worker_name()},
        # an uploaded profile's file, or "worker": measured on this worker once, cached under the data directory
        profile=profile, profile_cache=profile_cache_dir(settings) if profile == "worker" else None,
    )


def profile_cache_dir(settings: Settings) -> Path:
    """Where this worker keeps the device profiles it measured (one per device, architecture and input)."""
    return settings.data_dir / "profile-cache"


def _profile_file(session: Session, storage: Storage, job: Job, scratch: Path) -> Path | None:
    """A local copy of the job's uploaded device profile (None when the job names none)."""
    if not job.device_profile_id:
        return None
    row = session.get(DeviceProfile, job.device_profile_id)
    if row is None:
        raise InputError("the job's device profile was deleted")
    return _local_file(storage, row.storage_key, scratch)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _store_artifacts(settings: Settings, storage: Storage, job_id: str, attempt: int, out_dir: Path,
                     report: dict[str, Any]) -> None:
    """Move every output file into storage, then record them and the success in one transaction. On any
    failure the files already stored are deleted again: a failed job serves no partial artifacts."""
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    rows, keys = [], []
    try:
        for p in files:
            name = p.relative_to(out_dir).as_posix()
            size, digest = p.stat().st_size, _sha256(p)
            key = f"{attempt_prefix(job_id, attempt)}/{name}"
            try:
                storage.put_file(key, p)
            except StorageError:
                raise
            except Exception as exc:  # any backend failure becomes one clear message
                raise StorageError(f"storage error: could not store '{key}': {type(exc).__name__}: {exc}") from exc
            keys.append(key)
            ctype = CONTENT_TYPES.get(p.suffix.lower()) or mimetypes.guess_type(name)[0] or "application/octet-stream"
            rows.append(Artifact(id=new_id("art"), job_id=job_id, name=name, size=size, sha256=digest,
                                 storage_key=key, content_type=ctype))
        with session_scope(settings.database_url) as s:
            done = s.execute(update(Job).where(_mine(job_id, attempt)).values(
                status="succeeded", stage="done", progress=1.0, result=report, error=None,
                finished_at=utcnow(), heartbeat_at=utcnow())).rowcount
            if done != 1:
                status = s.scalar(select(Job.status).where(Job.id == job_id))
                raise LostJob(f"job left attempt {attempt} (now {status!r}) while it ran")
            s.add_all(rows)
    except BaseException:
        for key in keys:
            try:
                storage.delete(key)
            except Exception as exc:  # noqa: BLE001 - keep the original error
                log.warning("could not delete %s: %s", key, exc)
        raise


def execute_job(job_id: str, settings: Settings | None = None) -> str:
    """Run job ``job_id`` to completion; returns its final status (or ``"skipped"`` if not claimable)."""
    settings = settings or get_settings()
    keep_freed_memory()  # this (forked) worker process: large CPU passes without a page fault per tensor
    token = current_job.set(job_id)
    try:
        attempt = claim(settings, job_id)
        if attempt is None:
            log.info("job %s is not claimable (already taken, finished or cancelled); skipping", job_id)
            return "skipped"
        try:
            with Heartbeat(settings, job_id, attempt):
                status = _execute(settings, job_id, attempt)
        finally:
            _after_job(job_id)
        metrics.JOBS_FINISHED.labels(status=status).inc()
        return status
    finally:
        current_job.reset(token)


def _after_job(job_id: str) -> None:
    """Free the GPU memory the job left (gc + ``torch.cuda.empty_cache``) and record it in the registry."""
    from worker.celery_app import registration
    from worker.registry import release_gpu_memory

    memory = release_gpu_memory()
    if memory["before"] is not None:
        log.info("job %s: GPU memory released: %s -> %s", job_id, memory["before"], memory["after"])
        metrics.observe_gpu_memory(memory["after"])
    reg = registration()
    if reg is not None:
        try:
            reg.job_done(memory)
        except Exception as exc:  # noqa: BLE001 - bookkeeping only
            log.warning("could not record job %s in the worker registry: %s", job_id, exc)


def _worker_name() -> str | None:
    """This worker's Celery node name (e.g. ``gpu0@host``), once registered."""
    from worker.celery_app import registration

    reg = registration()
    return reg.name if reg is not None else None


def finetune_checkpoint_dir(settings: Settings, job_id: str) -> Path:
    """Per-job fine-tuning checkpoints; kept until the job ends so that a re-delivered job resumes."""
    return settings.tmp_dir / "finetune" / job_id


def _execute(settings: Settings, job_id: str, attempt: int) -> str:
    outcome = _run_attempt(settings, job_id, attempt)
    if outcome != "lost":  # the job ended here: its resume state is no longer needed
        shutil.rmtree(finetune_checkpoint_dir(settings, job_id), ignore_errors=True)
    return outcome


def _run_attempt(settings: Settings, job_id: str, attempt: int) -> str:
    storage = get_storage(settings)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=settings.tmp_dir))
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
    limit = job_time_limit(settings, job.spec)
    reporter = Reporter(settings, job_id, attempt, limit)
    log.info("job %s: attempt %d started", job_id, attempt, extra={"attempt": attempt})
    try:
        prune_job = _build_job(settings, storage, job, work)
        out_dir = work / "out"
        out_dir.mkdir()
        log.info("job %s: running %s on %s", job_id, prune_job.spec.method, prune_job.arch)
        report = run_prune_job(prune_job, out_dir, reporter.progress, reporter.should_cancel, reporter.detail)
        reporter.end_stage()
        _store_artifacts(settings, storage, job_id, attempt, out_dir, report)
        log.info("job %s: succeeded", job_id)
        return "succeeded"
    except JobCancelled:
        if reporter.lost:
            log.warning("job %s: attempt %d lost the job while it ran; results discarded", job_id, attempt)
            return "lost"
        if reporter.timed_out:
            msg = f"time limit exceeded: the job ran longer than {limit:g} s"
            _finish(settings, job_id, attempt, status="failed", error=msg)
            log.info("job %s: failed: %s", job_id, msg)
            return "failed"
        _finish(settings, job_id, attempt, status="cancelled", error="cancelled by the user")
        log.info("job %s: cancelled", job_id)
        return "cancelled"
    except LostJob as exc:
        log.warning("job %s: %s; results discarded", job_id, exc)
        return "lost"
    except InputError as exc:
        _finish(settings, job_id, attempt, status="failed", error=str(exc))
        log.info("job %s: failed: %s", job_id, exc)
        return "failed"
    except StorageError as exc:
        _finish(settings, job_id, attempt, status="failed", error=str(exc))
        log.error("job %s: failed: %s", job_id, exc)
        return "failed"
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError outside a training phase
            msg = f"out of GPU memory: {str(exc).splitlines()[0] if str(exc) else exc!r}; lower batch_size"
            _finish(settings, job_id, attempt, status="failed", error=msg)
            log.error("job %s: failed: %s", job_id, msg)
            return "failed"
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        _finish(settings, job_id, attempt, status="failed", error=f"internal error: {type(exc).__name__}: {exc}")
        return "failed"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@celery_app.task(name=TASK_RUN_JOB, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    """Celery entry point: run one job by id (idempotent)."""
    return execute_job(job_id)
