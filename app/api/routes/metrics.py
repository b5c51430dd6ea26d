"""``GET /metrics``: Prometheus text format. Fleet-wide numbers are read at scrape time (jobs by status from
the database, queue depth from the broker), so every API replica reports the same values; upload bytes and
request latencies are this process's counters. Per-stage job durations come from each worker's own endpoint
(``SIMPRUNE_WORKER_METRICS_PORT``) and the database view ``simprune_job_duration_seconds``."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from app.api.problems import Problem
from app.core.celery import get_celery, gpu_queue
from app.core.config import Settings
from app.core.db import session_scope
from app.models import JOB_STATUSES, Job

log = logging.getLogger("simprune.api")
router = APIRouter(tags=["health"])


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the job queue (Redis lists, or the SQLite broker's table); None if unknown."""
    if settings.broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return sum(int(client.llen(k)) for k in client.scan_iter(match=f"{settings.queue}*", count=100)
                       if client.type(k) == b"list")
        finally:
            client.close()
    if settings.broker_url.startswith("sqla"):
        with get_celery(settings).connection_for_read() as conn:
            session = conn.default_channel.session
            return int(session.execute(text(
                "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                "WHERE q.name IN (:q, :g) AND m.visible"), {"q": settings.queue, "g": gpu_queue(settings)}
            ).scalar() or 0)
    return None


class FleetCollector(Collector):
    """Jobs by status, the oldest queued job's age and the queue depth, read when scraped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("simprune_jobs", "Jobs by status (all tenants)", labels=["status"])
        durations = GaugeMetricFamily("simprune_job_duration_seconds_avg",
                                      "Mean run time of finished jobs, by status", labels=["status"])
        try:
            with session_scope(self.settings.database_url) as s:
                counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
                rows = s.execute(select(Job.status, Job.started_at, Job.finished_at)
                                 .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
                                 .order_by(Job.finished_at.desc()).limit(1000)).all()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail when the database is down
            log.warning("metrics: database unavailable: %s", exc)
            counts, rows = {}, []
        for status in JOB_STATUSES:
            jobs.add_metric([status], float(counts.get(status, 0)))
        yield jobs
        by_status: dict[str, list[float]] = {}
        for status, started, finished in rows:
            by_status.setdefault(status, []).append((finished - started).total_seconds())
        for status, vals in by_status.items():
            durations.add_metric([status], sum(vals) / len(vals))
        yield durations
        try:
            depth = queue_depth(self.settings)
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: broker unavailable: %s", exc)
            depth = None
        if depth is not None:
            g = GaugeMetricFamily("simprune_queue_depth", "Messages waiting in the job queue", labels=["queue"])
            g.add_metric([self.settings.queue], float(depth))
            yield g


class ApiMetrics:
    """One registry per app (several apps may live in one test process)."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.upload_bytes = Counter("simprune_upload_bytes", "Bytes of accepted uploads", ["kind"],
                                    registry=self.registry)
        self.uploads_rejected = Counter("simprune_uploads_rejected", "Uploads refused (4xx)", ["kind"],
                                        registry=self.registry)
        self.requests = Histogram("simprune_http_request_duration_seconds", "API request latency",
                                  ["method", "route", "status"], registry=self.registry,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.registry.register(FleetCollector(settings))


def get_metrics(request: Any) -> ApiMetrics:
    """The app's metrics."""
    return request.app.state.metrics


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"description": "token required"}})
async def metrics(request: Request) -> Response:
    """Jobs by status, queue depth, upload bytes and request latencies in Prometheus text format. With
    ``SIMPRUNE_METRICS_TOKEN`` set, only for ``Authorization: Bearer <that token>`` (401 otherwise)."""
    token = request.app.state.settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Problem(401, "metrics need 'Authorization: Bearer <SIMPRUNE_METRICS_TOKEN>'", "unauthorized",
                          headers={"WWW-Authenticate": 'Bearer realm="simprune-metrics"'})
    body = await run_in_threadpool(generate_latest, get_metrics(request).registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
