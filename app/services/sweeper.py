"""The sweeper: repairs jobs the broker or a worker lost. It runs in every worker (a background thread, every
``sweep_interval_s``), so it also runs in the embedded default; every change is a compare-and-set on the job
row, so any number of sweepers may run at once.

- a ``running`` job whose heartbeat is older than ``stale_job_after_s`` (its worker died): re-queued (status
  back to ``queued``, message re-sent) while ``attempts < max_attempts``, else failed; cancelled instead when
  a cancel was requested; the dead attempt's partial artifacts are deleted from storage;
- a ``running`` job past its time limit (plus a grace period) whose worker stopped checking: failed;
- a ``queued`` job whose message was sent more than ``requeue_queued_after_s`` ago and that the broker no
  longer holds (Redis: looked up in the queue and the unacked set; other brokers: assumed lost): re-sent. A
  duplicate message is harmless: the worker's claim is a compare-and-set;
- artifacts of a job finished more than ``artifact_ttl_days`` ago, or of a deleted job whose files could not
  be removed at once, are deleted from storage, then their rows (``jobs.artifacts_expired_at`` records it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, exists, or_, select, update

from app.core.celery import enqueue_job
from app.core.config import Settings
from app.core.db import session_scope
from app.models import Artifact, Job, utcnow
from app.storage import Storage, get_storage

log = logging.getLogger("simprune.sweeper")
TIME_LIMIT_GRACE_S = 60.0


@dataclass
class SweepResult:
    """What one sweep did (job ids per action)."""

    requeued: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.resent or self.failed or self.cancelled or self.expired)


def attempt_prefix(job_id: str, attempt: int) -> str:
    """The storage prefix of one attempt's artifacts."""
    return f"jobs/{job_id}/{attempt}"


def job_time_limit(settings: Settings, spec: dict[str, Any] | None) -> float:
    """The job's time limit: its own ``time_limit_s`` when set, capped by the server's."""
    own = (spec or {}).get("time_limit_s")
    return min(float(own), settings.job_time_limit_s) if own else settings.job_time_limit_s


def broker_job_ids(settings: Settings) -> set[str] | None:
    """Job ids the broker holds (waiting or delivered-unacked), or None when the broker cannot be inspected."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    import json

    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        raw: list[bytes] = []
        for key in client.scan_iter(match=f"{settings.queue}*", count=100):  # the queue and its priority lists
            if client.type(key) == b"list":
                raw += client.lrange(key, 0, -1)
        raw += client.hvals("unacked")
    finally:
        client.close()
    ids: set[str] = set()
    for item in raw:
        try:
            msg = json.loads(item)
            msg = msg[0] if isinstance(msg, list) else msg  # unacked holds [message, exchange, routing_key]
            argsrepr = msg.get("headers", {}).get("argsrepr", "")
        except (ValueError, AttributeError, IndexError):
            continue
        ids.update(tok.strip(" '\"[](),") for tok in argsrepr.split(",") if "job_" in tok)
    return ids


def _requeue_stale(settings: Settings, storage: Storage, out: SweepResult) -> None:
    now = utcnow()
    stale = now - timedelta(seconds=settings.stale_job_after_s)
    with session_scope(settings.database_url) as s:
        rows = s.execute(select(Job.id, Job.attempts, Job.cancel_requested, Job.heartbeat_at)
                         .where(Job.status == "running", Job.heartbeat_at < stale)).all()
    for job_id, attempts, cancel, beat in rows:
        if cancel:
            values: dict[str, Any] = {"status": "cancelled", "error": "cancelled by the user (its worker was lost)",
                                      "finished_at": now}
            bucket = out.cancelled
        elif attempts >= settings.max_attempts:
            values = {"status": "failed", "finished_at": now,
                      "error": f"worker lost: no heartbeat for {settings.stale_job_after_s:g} s, "
                               f"{attempts} attempt(s) of {settings.max_attempts} used"}
            bucket = out.failed
        else:
            values = {"status": "queued", "stage": "requeued", "progress": 0.0, "worker_id": None,
                      "enqueued_at": now}
            bucket = out.requeued
        with session_scope(settings.database_url) as s:  # compare-and-set on the heartbeat we saw
            done = s.execute(update(Job).where(Job.id == job_id, Job.status == "running",
                                               Job.attempts == attempts, Job.heartbeat_at == beat)
                             .values(**values)).rowcount
        if not done:
            continue
        try:
            removed = storage.delete_prefix(attempt_prefix(job_id, attempts))
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort; the rows never point at these
            log.warning("could not delete partial artifacts of %s attempt %s: %s", job_id, attempts, exc)
            removed = 0
        bucket.append(job_id)
        log.warning("job %s: worker lost (attempt %d); %s (%d partial artifact(s) removed)", job_id, attempts,
                    values["status"], removed, extra={"job_id": job_id})
        if values["status"] == "queued":
            enqueue_job(settings, job_id)


def _fail_overdue(settings: Settings, out: SweepResult) -> None:
    now = utcnow()
    with session_scope(settings.database_url) as s:
        rows = s.execute(select(Job.id, Job.attempts, Job.started_at, Job.spec).where(Job.status == "running")).all()
    for job_id, attempts, started, spec in rows:
        limit = job_time_limit(settings, spec)
        if started is None or (now - started).total_seconds() < limit + TIME_LIMIT_GRACE_S:
            continue
        with session_scope(settings.database_url) as s:
            done = s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempts)
                             .values(status="failed", finished_at=now, cancel_requested=True,
                                     error=f"time limit exceeded: the job ran longer than {limit:g} s")).rowcount
        if done:
            out.failed.append(job_id)
            log.warning("job %s: failed by the sweeper (time limit %g s)", job_id, limit, extra={"job_id": job_id})


def _resend_lost(settings: Settings, out: SweepResult) -> None:
    now = utcnow()
    old = now - timedelta(seconds=settings.requeue_queued_after_s)
    with session_scope(settings.database_url) as s:
        rows = s.execute(select(Job.id, Job.enqueued_at, Job.created_at).where(Job.status == "queued")).all()
    candidates = [(i, e) for i, e, c in rows if (e or c) < old]
    if not candidates:
        return
    held = broker_job_ids(settings)
    for job_id, sent in candidates:
        if held is not None and job_id in held:
            continue
        with session_scope(settings.database_url) as s:
            cond = Job.enqueued_at.is_(None) if sent is None else Job.enqueued_at == sent
            done = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued", cond)
                             .values(enqueued_at=now)).rowcount
        if done:
            enqueue_job(settings, job_id)
            out.resent.append(job_id)
            log.warning("job %s: queued but not in the broker; message re-sent", job_id, extra={"job_id": job_id})


def job_prefix(job_id: str) -> str:
    """The storage prefix of every attempt's artifacts of a job."""
    return f"jobs/{job_id}"


def remove_artifacts(settings: Settings, storage: Storage, job_id: str, expired: bool = False) -> int:
    """Delete the job's files (every attempt) from storage, then its artifact rows; returns the files removed.

    Files go first: if storage fails, the rows stay and a later sweep retries (nothing points at missing files
    but for the job's own 410). With ``expired`` the job records when retention removed them."""
    removed = storage.delete_prefix(job_prefix(job_id))
    with session_scope(settings.database_url) as s:
        s.execute(delete(Artifact).where(Artifact.job_id == job_id))
        if expired:
            s.execute(update(Job).where(Job.id == job_id, Job.artifacts_expired_at.is_(None))
                      .values(artifacts_expired_at=utcnow()))
    return removed


def _expire_artifacts(settings: Settings, storage: Storage, out: SweepResult, batch: int = 200) -> None:
    has_files = exists().where(Artifact.job_id == Job.id)
    due = Job.deleted_at.is_not(None)
    if settings.artifact_ttl_days > 0:
        cutoff = utcnow() - timedelta(days=settings.artifact_ttl_days)
        due = or_(due, Job.finished_at < cutoff)
    with session_scope(settings.database_url) as s:
        rows = s.execute(select(Job.id, Job.deleted_at).where(due, has_files).limit(batch)).all()
    for job_id, deleted_at in rows:
        try:
            removed = remove_artifacts(settings, storage, job_id, expired=deleted_at is None)
        except Exception as exc:  # noqa: BLE001 - retried by the next sweep
            log.warning("could not remove the artifacts of %s: %s", job_id, exc, extra={"job_id": job_id})
            continue
        out.expired.append(job_id)
        log.info("job %s: %d artifact file(s) removed (%s)", job_id, removed,
                 "job deleted" if deleted_at else f"older than {settings.artifact_ttl_days:g} days",
                 extra={"job_id": job_id})


def sweep(settings: Settings, storage: Storage | None = None) -> SweepResult:
    """One pass of the sweeper (see the module docstring); returns what it changed."""
    out = SweepResult()
    storage = storage or get_storage(settings)
    _requeue_stale(settings, storage, out)
    _fail_overdue(settings, out)
    _resend_lost(settings, out)
    _expire_artifacts(settings, storage, out)
    return out
