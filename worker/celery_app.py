"""The worker's Celery app, configured from simprune's Settings (``SIMPRUNE_BROKER_URL`` etc.).

Run: ``simprune worker`` or ``celery -A worker.celery_app worker -P solo -Q prune``. The ``solo`` pool runs
one job at a time in this process: nothing is forked after torch/CUDA could be initialised (CUDA-safe), and
scaling out means more worker processes (one per GPU). See :mod:`app.core.celery` for the reliability
settings (late acks, prefetch 1, reject on worker loss).
"""

from __future__ import annotations

from app.core.celery import make_celery
from app.core.config import get_settings

settings = get_settings()
celery_app = make_celery(settings)
celery_app.conf.include = ["worker.tasks"]
app = celery_app  # `celery -A worker.celery_app` finds `app` / `celery_app`
