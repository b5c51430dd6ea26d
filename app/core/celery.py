"""Celery configuration shared by the API (which only sends tasks) and the worker (which runs them).

Pool choice: the worker runs with the ``solo`` pool, one job at a time in the worker's main process. No
process is forked after torch/CUDA could have been initialised, so CUDA is safe; scale out by starting more
``simprune worker`` processes (one per GPU, e.g. with ``CUDA_VISIBLE_DEVICES``). Late acks plus
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


def enqueue_job(settings: Settings, job_id: str) -> None:
    """Send the ``run_job(job_id)`` task to the job queue."""
    get_celery(settings).send_task(TASK_RUN_JOB, args=[job_id], queue=settings.queue)


def check_broker(settings: Settings, timeout: float = 3.0) -> None:
    """Raise if the broker cannot be reached within about ``timeout`` seconds."""
    with get_celery(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout)
        if settings.broker_url.startswith("sqla"):  # the SQLAlchemy transport connects lazily
            from sqlalchemy import text

            conn.default_channel.session.execute(text("SELECT 1"))
