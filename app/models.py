"""Database tables (SQLAlchemy 2 typed ORM). Every resource belongs to a tenant; the Job row is the source of
truth for job state (Celery's result backend is not used)."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    """A random, URL-safe resource id such as ``job_3f9c...`` (prefix tells the resource type)."""
    return f"{prefix}_{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always returned timezone-aware (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of all tables."""

    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant", cascade="all, delete-orphan")


class ApiKey(Base):
    """An API key: only ``sha256(token)`` is stored; ``prefix`` (public) finds the row in one lookup."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")


class Model(Base):
    """An uploaded, validated checkpoint."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    arch: Mapped[str] = mapped_column(String(100))
    num_classes: Mapped[int] = mapped_column(Integer)
    in_channels: Mapped[int] = mapped_column(Integer)
    input_size: Mapped[list[Any]] = mapped_column()
    mean: Mapped[list[Any] | None] = mapped_column(default=None)
    std: Mapped[list[Any] | None] = mapped_column(default=None)
    params: Mapped[int] = mapped_column(BigInteger)
    flops: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dry_run: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # ONNX uploads: prunable groups, operators


class Dataset(Base):
    """An uploaded, validated dataset (ImageFolder zip or ``.npz``)."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(32))
    samples: Mapped[int] = mapped_column(Integer)
    classes: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[Any] | None] = mapped_column(default=None)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceProfile(Base):
    """An uploaded, validated device latency profile (:class:`simprune.profiles.DeviceProfile` JSON, kept as
    the uploaded file in storage; the columns are what listing and job validation need)."""

    __tablename__ = "device_profiles"
    __table_args__ = (Index("ix_device_profiles_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    arch: Mapped[str] = mapped_column(String(200))
    input_size: Mapped[list[Any]] = mapped_column()
    batch_size: Mapped[int] = mapped_column(Integer)
    device_type: Mapped[str] = mapped_column(String(8))  # cpu | cuda
    device_name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A pruning job. ``status`` moves queued -> running -> succeeded|failed|cancelled (or queued -> cancelled).

    A deleted job keeps its row (``deleted_at`` set, artifacts gone) as the audit record; the API answers 410.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_jobs_finished_at", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), index=True)
    calibration_dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), default=None
    )
    eval_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), default=None)
    train_dataset_id: Mapped[str | None] = mapped_column(  # spec["finetune"]["dataset_id"], as a foreign key
        ForeignKey("datasets.id", ondelete="SET NULL"), default=None
    )
    device_profile_id: Mapped[str | None] = mapped_column(  # the uploaded latency profile of a latency target
        ForeignKey("device_profiles.id", ondelete="SET NULL"), default=None
    )
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the validated request: method, options, finetune...
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stage: Mapped[str | None] = mapped_column(String(64), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # epoch, step, eta_s, loss...
    error: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)  # last time its message was sent
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)  # DELETE /v1/jobs/{id}: the row is the audit
    artifacts_expired_at: Mapped[datetime | None] = mapped_column(default=None)  # removed by retention

    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="Artifact.name"
    )


class Artifact(Base):
    """A file a succeeded job produced (model.pt2, report.json, ...), kept in the storage backend."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))
    content_type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class WorkerNode(Base):
    """A live worker process, written by the worker itself (registered at start, heartbeat every
    ``worker_heartbeat_interval_s``, removed at a clean stop). Routing reads it: a job is sent to the GPU queue
    only while a worker consuming that queue has a recent heartbeat (works with any broker)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid
    name: Mapped[str] = mapped_column(String(255))  # the Celery node name, e.g. gpu0@host
    kind: Mapped[str] = mapped_column(String(8))  # gpu | cpu
    gpu: Mapped[str | None] = mapped_column(String(64), default=None)  # its CUDA_VISIBLE_DEVICES
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)  # the queues it consumes
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    gpu_memory: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # allocated/reserved bytes after a job
