"""The worker's Prometheus metrics (served on ``SIMPRUNE_WORKER_METRICS_PORT`` when set): how long each
engine stage takes and how jobs end. The API's ``/metrics`` has the fleet-wide view (jobs by status, queue
depth, upload bytes)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

STAGE_SECONDS = Histogram("simprune_job_stage_duration_seconds", "Duration of one engine stage of a job",
                          ["stage"], buckets=STAGE_BUCKETS)
JOBS_FINISHED = Counter("simprune_worker_jobs_total", "Jobs this worker ran, by final status", ["status"])
GPU_MEMORY = Gauge("simprune_worker_gpu_memory_bytes", "CUDA memory of this worker after its last job was freed",
                   ["kind"])
SWEEPS = Counter("simprune_sweeper_actions_total", "Jobs the sweeper repaired, by action", ["action"])

_started: set[int] = set()


def observe_stage(stage: str, seconds: float) -> None:
    """Record one stage's duration."""
    STAGE_SECONDS.labels(stage=stage).observe(max(seconds, 0.0))


def observe_gpu_memory(memory: dict[str, int] | None) -> None:
    """Record the CUDA memory (``allocated``, ``reserved`` bytes) left after a job."""
    for kind, value in (memory or {}).items():
        GPU_MEMORY.labels(kind=kind).set(value)


def serve(port: int) -> None:
    """Expose the metrics over HTTP on ``port`` (once per process)."""
    if port and port not in _started:
        start_http_server(port)
        _started.add(port)
