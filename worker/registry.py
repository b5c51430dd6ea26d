"""The worker registry: each worker process keeps one row of the ``workers`` table alive (registered when Celery
is ready, a heartbeat every ``worker_heartbeat_interval_s``, removed at a clean stop), so the API can route a
job to the GPU queue only while a GPU worker is alive, whatever the broker (the embedded SQLite one or Redis).

Also here: the worker's capability (:func:`worker_kind`), the GPU memory it releases between jobs
(:func:`release_gpu_memory`, measured before and after) and the orphan check that fails queued ``device: cuda``
jobs once no GPU worker is left to run them.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update

from app.core.celery import fail_queued, gpu_queue, gpu_worker_alive
from app.core.config import Settings
from app.core.db import session_scope
from app.models import Job, WorkerNode, utcnow

log = logging.getLogger("simprune.worker")
#: rows of workers not seen for this long are deleted by any live worker (crashed workers leave theirs behind)
FORGET_AFTER_S = 24 * 3600.0


def worker_kind(settings: Settings) -> str:
    """``gpu`` or ``cpu``: ``SIMPRUNE_WORKER_KIND``, or (auto) gpu when CUDA is visible and the worker's device
    is not ``cpu``."""
    if settings.worker_kind != "auto":
        return settings.worker_kind
    if settings.device == "cpu":
        return "cpu"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def gpu_memory() -> dict[str, int] | None:
    """CUDA memory of this process in bytes (``allocated``, ``reserved``), or None where CUDA is not in use."""
    try:
        import torch
    except ImportError:
        return None
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return {"allocated": int(torch.cuda.memory_allocated()), "reserved": int(torch.cuda.memory_reserved())}


def release_gpu_memory() -> dict[str, Any]:
    """Free what the last job left: ``gc.collect()`` and, with CUDA in use, ``torch.cuda.empty_cache()``.
    Returns the memory ``before`` and ``after`` (None each without CUDA) for the registry and the logs."""
    before = gpu_memory()
    gc.collect()
    if before is not None:
        import torch

        torch.cuda.empty_cache()
    return {"before": before, "after": gpu_memory()}


class Registration:
    """This process's row in ``workers`` and the daemon thread that keeps it alive."""

    def __init__(self, settings: Settings, name: str, queues: list[str], kind: str) -> None:
        self.settings, self.name, self.queues, self.kind = settings, name, list(queues), kind
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.gpu = os.environ.get("CUDA_VISIBLE_DEVICES") if kind == "gpu" else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-registry", daemon=True)

    def start(self) -> Registration:
        """Write the row and start the heartbeat thread."""
        self._beat(first=True)
        self._thread.start()
        log.info("worker %s registered (%s, queues %s, CUDA_VISIBLE_DEVICES=%s)", self.name, self.kind,
                 ",".join(self.queues), self.gpu)
        return self

    def _beat(self, first: bool = False, **values: Any) -> None:
        now = utcnow()
        with session_scope(self.settings.database_url) as s:
            row = s.get(WorkerNode, self.id)
            if row is None:
                s.add(WorkerNode(id=self.id, name=self.name, kind=self.kind, gpu=self.gpu, queues=self.queues,
                                 started_at=now, heartbeat_at=now, jobs_done=0, **values))
            else:
                if first:
                    row.started_at, row.jobs_done = now, 0
                row.heartbeat_at = now
                for key, value in values.items():
                    setattr(row, key, value)

    def job_done(self, memory: dict[str, Any]) -> None:
        """Count a finished job and record the GPU memory released after it."""
        with session_scope(self.settings.database_url) as s:
            s.execute(update(WorkerNode).where(WorkerNode.id == self.id).values(
                jobs_done=WorkerNode.jobs_done + 1, gpu_memory=memory, heartbeat_at=utcnow()))

    def _run(self) -> None:
        while not self._stop.wait(self.settings.worker_heartbeat_interval_s):
            try:
                self._beat()
                fail_orphaned_cuda_jobs(self.settings)
                forget_dead_workers(self.settings)
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while; retried next period
                log.warning("worker heartbeat failed: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        """Stop the heartbeat and remove the row (a clean stop: this worker no longer takes jobs)."""
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            with session_scope(self.settings.database_url) as s:
                s.execute(delete(WorkerNode).where(WorkerNode.id == self.id))
        except Exception as exc:  # noqa: BLE001 - the row ages out
            log.warning("could not unregister worker %s: %s", self.name, exc)


def fail_orphaned_cuda_jobs(settings: Settings) -> list[str]:
    """Fail queued ``device: cuda`` jobs, waiting longer than ``worker_alive_after_s``, while no GPU worker is
    alive (they would wait forever); returns their ids."""
    if gpu_worker_alive(settings):
        return []
    old = utcnow() - timedelta(seconds=settings.worker_alive_after_s)
    with session_scope(settings.database_url) as s:
        rows = s.execute(select(Job.id, Job.spec, Job.enqueued_at, Job.created_at)
                         .where(Job.status == "queued")).all()
    failed = []
    for job_id, spec, sent, created in rows:
        if (spec or {}).get("device") == "cuda" and (sent or created) < old:
            msg = (f"the job asks for device 'cuda' but no GPU worker has been alive (consuming queue "
                   f"'{gpu_queue(settings)}') for {settings.worker_alive_after_s:g} s")
            if fail_queued(settings, job_id, msg):
                failed.append(job_id)
                log.warning("job %s: failed: %s", job_id, msg, extra={"job_id": job_id})
    return failed


def forget_dead_workers(settings: Settings) -> int:
    """Delete rows of workers not seen for ``FORGET_AFTER_S`` (killed workers cannot remove their own)."""
    old = utcnow() - timedelta(seconds=FORGET_AFTER_S)
    with session_scope(settings.database_url) as s:
        return int(s.execute(delete(WorkerNode).where(WorkerNode.heartbeat_at < old)).rowcount or 0)
