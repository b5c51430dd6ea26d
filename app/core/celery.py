"""Celery configuration shared by the API (which only sends tasks) and the worker (which runs them).

Pool choice: the worker runs with the ``solo`` pool, one job at a time in the worker's main process. No
process is forked after torch/CUDA could have been initialised, so CUDA is safe; scale out with one worker
process per GPU (``simprune worker --gpus all``, :mod:`app.worker_supervisor`).

Queues by capability: the ``cpu`` queue (``settings.queue``) is consumed by every worker, the ``gpu`` queue
(``<queue>.gpu``) by GPU workers only; :func:`route_job` picks one per job from its spec and the ``workers``
table (a GPU worker is alive while its heartbeat is recent), so routing works with any broker. Late acks plus
``task_reject_on_worker_lost`` redeliver a job whose worker died; the task's compare-and-set claim makes a
duplicate delivery harmless.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery

from app.core.config import Settings

TASK_RUN_JOB = "simprune.run_job"
_lock = threading.Lock()
_apps: dict[tuple[str, str], Celery] = {}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for ``settings`` (broker, queue, reliability options)."""
    transport_options: dict[str, Any] = {}
    if settings.broker_url.startswith("sqla+sqlite"):
        settings.ensure_dirs()
        transport_options = {"connect_args": {"timeout": 30}}  # passed to create_engine by Kombu
    elif settings.broker_url.startswith(("redis", "rediss")):
        # a job may run for hours; a shorter visibility timeout would redeliver it (harmless, but wasteful)
        transport_options = {"visibility_timeout": int(settings.job_time_limit_s) + 3600}
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": settings.queue,
        "task_routes": {TASK_RUN_JOB: {"queue": settings.queue}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "solo",
        "worker_concurrency": 1,
        "worker_send_task_events": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                      "interval_max": 1},
    }


def make_celery(settings: Settings) -> Celery:
    """A new Celery app configured from ``settings``."""
    app = Celery("simprune")
    app.conf.update(celery_config(settings))
    return app


def get_celery(settings: Settings) -> Celery:
    """A cached Celery app per (broker, queue) for sending tasks from the API."""
    key = (settings.broker_url, settings.queue)
    with _lock:
        if key not in _apps:
            _apps[key] = make_celery(settings)
        return _apps[key]


def gpu_queue(settings: Settings) -> str:
    """The ``gpu`` queue: only GPU workers consume it (fine-tuning and training jobs, ``device: cuda``)."""
    return f"{settings.queue}.gpu"


def worker_queues(settings: Settings, kind: str) -> list[str]:
    """The queues a worker of ``kind`` (gpu | cpu) consumes: every worker takes the ``cpu`` queue
    (``settings.queue``: jobs any worker can run), GPU workers also the ``gpu`` queue, first."""
    return [gpu_queue(settings), settings.queue] if kind == "gpu" else [settings.queue]


def gpu_worker_alive(settings: Settings) -> bool:
    """Whether a worker consuming the ``gpu`` queue heart-beat within ``worker_alive_after_s`` (the
    ``workers`` table, so it works with every broker)."""
    from datetime import timedelta

    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models import WorkerNode, utcnow

    since = utcnow() - timedelta(seconds=settings.worker_alive_after_s)
    with session_scope(settings.database_url) as s:
        rows = s.scalars(select(WorkerNode.queues).where(WorkerNode.heartbeat_at >= since)).all()
    return any(gpu_queue(settings) in (queues or []) for queues in rows)


def needs_gpu(spec: dict[str, Any]) -> bool:
    """Whether a job spec trains: a training method (dcff, ssc) or fine-tuning after pruning."""
    from simprune.methods.registry import method_class

    if spec.get("finetune") is not None:
        return True
    try:
        return bool(method_class(str(spec.get("method"))).trains)
    except Exception:  # noqa: BLE001 - an unknown method fails in the worker with its own message
        return False


class NoGpuWorker(Exception):
    """A job asks for ``device: cuda`` and no GPU worker is alive."""


def route_job(settings: Settings, spec: dict[str, Any]) -> str:
    """The queue for a job: ``device: cuda`` -> gpu (:class:`NoGpuWorker` when no GPU worker is alive);
    ``device: cpu`` -> cpu; a training job -> gpu while a GPU worker is alive, else cpu; pruning only -> cpu
    (consumed by every worker, GPU workers included)."""
    device = spec.get("device", "auto")
    if device == "cuda":
        if not gpu_worker_alive(settings):
            raise NoGpuWorker(f"the job asks for device 'cuda' but no GPU worker is alive (none consumed queue "
                              f"'{gpu_queue(settings)}' in the last {settings.worker_alive_after_s:g} s); start "
                              "one with `simprune worker --gpus all`, or submit with device 'auto' or 'cpu'")
        return gpu_queue(settings)
    if device != "cpu" and needs_gpu(spec) and gpu_worker_alive(settings):
        return gpu_queue(settings)
    return settings.queue


def fail_queued(settings: Settings, job_id: str, error: str) -> bool:
    """Fail a job that is still ``queued`` (compare-and-set) with ``error``; whether it changed."""
    from sqlalchemy import update

    from app.core.db import session_scope
    from app.models import Job, utcnow

    with session_scope(settings.database_url) as s:
        return bool(s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                              .values(status="failed", error=error, finished_at=utcnow())).rowcount)


def enqueue_job(settings: Settings, job_id: str, spec: dict[str, Any] | None = None) -> str | None:
    """Send the ``run_job(job_id)`` task to the queue its spec routes to (:func:`route_job`; the spec is read
    from the database when not given) and return that queue. A job that needs a GPU worker while none is alive
    is failed instead, its error saying why, and None is returned."""
    if spec is None:
        from app.core.db import session_scope
        from app.models import Job

        with session_scope(settings.database_url) as s:
            job = s.get(Job, job_id)
            spec = dict(job.spec) if job is not None else {}
    try:
        queue = route_job(settings, spec)
    except NoGpuWorker as exc:
        fail_queued(settings, job_id, str(exc))
        return None
    get_celery(settings).send_task(TASK_RUN_JOB, args=[job_id], queue=queue)
    return queue


def check_broker(settings: Settings, timeout: float = 3.0) -> None:
    """Raise if the broker cannot be reached within about ``timeout`` seconds."""
    with get_celery(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout)
        if settings.broker_url.startswith("sqla"):  # the SQLAlchemy transport connects lazily
            from sqlalchemy import text

            conn.default_channel.session.execute(text("SELECT 1"))
