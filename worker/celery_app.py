"""The worker's Celery app, configured from simprune's Settings (``SIMPRUNE_BROKER_URL`` etc.).

Run: ``simprune worker`` (``--gpus all`` for one supervised worker per GPU) or ``celery -A worker.celery_app
worker -P solo``. A worker consumes the queues of its capability (``SIMPRUNE_WORKER_KIND``, auto-detected):
every worker the ``cpu`` queue (``SIMPRUNE_QUEUE``), GPU workers also the ``gpu`` queue (``<queue>.gpu``).
The ``solo`` pool runs one job at a time in this process: nothing is forked after torch/CUDA could be
initialised (CUDA-safe), and scaling out means more worker processes (one per GPU). See :mod:`app.core.celery`
for the reliability settings (late acks, prefetch 1, reject on worker loss).

At start-up each worker also configures structured logging (``SIMPRUNE_LOG_FORMAT``, JSON by default),
starts its metrics endpoint (``SIMPRUNE_WORKER_METRICS_PORT``) and the sweeper thread
(:mod:`app.services.sweeper`, every ``SIMPRUNE_SWEEP_INTERVAL_S``), and registers in the ``workers`` table
(:mod:`worker.registry`), which routing reads.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import setup_logging, worker_ready, worker_shutdown

from app.core.celery import make_celery, worker_queues
from app.core.config import get_settings
from app.core.logs import configure_logging

settings = get_settings()
celery_app = make_celery(settings)
celery_app.conf.include = ["worker.tasks"]
app = celery_app  # `celery -A worker.celery_app` finds `app` / `celery_app`

log = logging.getLogger("simprune.worker")
_stop_sweeper = threading.Event()
_registration: list[Any] = []  # this process's worker.registry.Registration, once Celery is ready


def configure_queues(kind: str | None = None) -> list[str]:
    """Consume the queues of this worker's capability (``-Q`` on the command line still wins); returns them."""
    from kombu import Exchange, Queue

    from worker.registry import worker_kind

    s = get_settings()
    names = worker_queues(s, kind or worker_kind(s))
    # exchange and routing key as the API's send_task(queue=name) creates them (Celery's automatic queues)
    celery_app.conf.task_queues = [Queue(n, Exchange(n), routing_key=n) for n in names]
    return names


configure_queues()


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
    _register(_kw.get("sender"))
    if s.sweep_interval_s > 0:
        _stop_sweeper.clear()
        threading.Thread(target=sweeper_loop, args=(_stop_sweeper,), name="sweeper", daemon=True).start()
        log.info("sweeper started (every %g s)", s.sweep_interval_s)


def _register(consumer: Any) -> None:
    """Register this worker (name, capability, the queues it really consumes) in the ``workers`` table."""
    from worker.registry import Registration, worker_kind

    s = get_settings()
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer is not None else [s.queue]
    name = getattr(consumer, "hostname", None) or "worker"
    _registration.append(Registration(s, name, queues, worker_kind(s)).start())


def registration() -> Any:
    """This process's registration (None before the worker is ready, and outside a worker)."""
    return _registration[-1] if _registration else None


@worker_shutdown.connect
def _stop_background(**_kw: Any) -> None:
    _stop_sweeper.set()
    while _registration:
        _registration.pop().stop()
