"""The worker's Celery app, configured from simprune's Settings (``SIMPRUNE_BROKER_URL`` etc.).

Run: ``simprune worker`` or ``celery -A worker.celery_app worker -P solo -Q prune``. The ``solo`` pool runs
one job at a time in this process: nothing is forked after torch/CUDA could be initialised (CUDA-safe), and
scaling out means more worker processes (one per GPU). See :mod:`app.core.celery` for the reliability
settings (late acks, prefetch 1, reject on worker loss).

At start-up each worker also configures structured logging (``SIMPRUNE_LOG_FORMAT``, JSON by default),
starts its metrics endpoint (``SIMPRUNE_WORKER_METRICS_PORT``) and the sweeper thread
(:mod:`app.services.sweeper`, every ``SIMPRUNE_SWEEP_INTERVAL_S``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import setup_logging, worker_ready, worker_shutdown

from app.core.celery import make_celery
from app.core.config import get_settings
from app.core.logs import configure_logging

settings = get_settings()
celery_app = make_celery(settings)
celery_app.conf.include = ["worker.tasks"]
app = celery_app  # `celery -A worker.celery_app` finds `app` / `celery_app`

log = logging.getLogger("simprune.worker")
_stop_sweeper = threading.Event()


@setup_logging.connect
def _logging(loglevel: Any = None, **_kw: Any) -> None:
    configure_logging(get_settings().log_format, loglevel or "INFO")


def sweeper_loop(stop: threading.Event) -> None:
    """Run :func:`app.services.sweeper.sweep` every ``sweep_interval_s`` until ``stop`` is set."""
    from app.services.sweeper import sweep
    from worker import metrics

    s = get_settings()
    while True:
        try:
            res = sweep(s)
            for action in ("requeued", "resent", "failed", "cancelled"):
                if n := len(getattr(res, action)):
                    metrics.SWEEPS.labels(action=action).inc(n)
        except Exception as exc:  # noqa: BLE001 - the broker or database may be down for a while
            log.warning("sweep failed: %s: %s", type(exc).__name__, exc)
        if stop.wait(s.sweep_interval_s):
            return


@worker_ready.connect
def _start_background(**_kw: Any) -> None:
    from worker import metrics

    s = get_settings()
    metrics.serve(s.worker_metrics_port)
    from app.services import catalog

    catalog.list_methods()  # import torch and the engine now, not during the first job
    if s.sweep_interval_s > 0:
        _stop_sweeper.clear()
        threading.Thread(target=sweeper_loop, args=(_stop_sweeper,), name="sweeper", daemon=True).start()
        log.info("sweeper started (every %g s)", s.sweep_interval_s)


@worker_shutdown.connect
def _stop_background(**_kw: Any) -> None:
    _stop_sweeper.set()
