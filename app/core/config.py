"""One pydantic-settings ``Settings`` for the API, the worker and the CLI (environment prefix ``SIMPRUNE_``)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Service configuration. Every field can be set from ``SIMPRUNE_<NAME>`` (e.g. ``SIMPRUNE_DATABASE_URL``).

    With nothing set, everything lives under ``DATA_DIR`` (default ``./data``): a SQLite database, an embedded
    SQLite broker (Kombu's SQLAlchemy transport, no server needed) and the local artifact storage.
    """

    model_config = SettingsConfigDict(env_prefix="SIMPRUNE_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Root for the database, broker, storage, temp files.")
    database_url: str = Field(default="", description="SQLAlchemy URL; default sqlite:///DATA_DIR/simprune.db.")
    broker_url: str = Field(default="", description="Celery broker URL; default sqla+sqlite:///DATA_DIR/broker.sqlite.")
    queue: str = Field(default="prune", description="Celery queue the jobs go to.")
    auth_enabled: bool = Field(default=True, description="Require `Authorization: Bearer <key>`.")
    default_tenant: str = Field(default="default", description="Tenant used when auth is disabled.")
    auth_cache_s: float = Field(default=5.0, ge=0, description=(
        "Seconds an API replica trusts a key it verified (saves a database query per request); a revoked key "
        "is refused at most this long after `simprune keys revoke`. 0: check every request."))

    max_checkpoint_bytes: int = Field(default=512 * MiB, gt=0)
    max_dataset_bytes: int = Field(default=2048 * MiB, gt=0)
    max_dataset_entries: int = Field(default=200_000, gt=0, description="Max members in a dataset zip.")
    max_dataset_uncompressed_bytes: int = Field(default=8192 * MiB, gt=0)
    max_form_field_bytes: int = Field(default=64 * 1024, gt=0, description="Max size of one non-file form field.")

    job_time_limit_s: float = Field(default=6 * 3600.0, gt=0, description="A running job is failed after this.")
    progress_interval_s: float = Field(default=0.5, ge=0, description="Min seconds between progress writes.")
    cancel_check_interval_s: float = Field(default=1.0, ge=0, description="Min seconds between cancel checks.")
    stale_job_after_s: float = Field(default=120.0, gt=0,
                                     description="A running job without heartbeat this long is re-queued.")
    heartbeat_interval_s: float = Field(default=10.0, gt=0, description="Worker heartbeat period while a job runs.")
    sweep_interval_s: float = Field(default=30.0, ge=0,
                                    description="Period of the sweeper in each worker (0 disables it).")
    requeue_queued_after_s: float = Field(default=300.0, gt=0,
                                          description="Re-send a queued job's message after this long.")
    max_attempts: int = Field(default=3, ge=1, description="Attempts before a job whose worker died is failed.")

    storage: Literal["local", "s3"] = Field(default="local", description="Artifact storage backend.")
    s3_bucket: str = Field(default="", description="Bucket for SIMPRUNE_STORAGE=s3.")
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket (e.g. 'simprune/').")
    s3_endpoint_url: str = Field(default="", description="S3-compatible endpoint (MinIO, Ceph...); empty for AWS.")
    s3_region: str = Field(default="us-east-1")
    s3_access_key_id: str = Field(default="", description="Empty: boto3's usual credential chain.")
    s3_secret_access_key: str = Field(default="")
    s3_url_expiry_s: int = Field(default=3600, gt=0, description="Lifetime of presigned artifact URLs.")

    rate_limit_enabled: bool = Field(default=True, description="Per-tenant token buckets on uploads and jobs.")
    upload_rate_per_min: float = Field(default=120.0, gt=0, description="Sustained uploads per minute per tenant.")
    upload_burst: int = Field(default=60, ge=1, description="Uploads a tenant may send at once.")
    job_rate_per_min: float = Field(default=600.0, gt=0, description="Sustained job submissions per minute.")
    job_burst: int = Field(default=300, ge=1, description="Job submissions a tenant may send at once.")
    rate_limit_redis_url: str = Field(
        default="", description="Share the buckets between API replicas; default: the broker when it is Redis.")

    read_rate_per_min: float = Field(default=1200.0, gt=0,
                                     description="Sustained read requests (GET) per minute per tenant.")
    read_burst: int = Field(default=200, ge=1, description="Read requests a tenant may send at once.")
    max_event_streams_per_tenant: int = Field(default=8, ge=1,
                                              description="Concurrent /events streams per tenant (429 beyond).")

    max_json_body_bytes: int = Field(default=256 * 1024, gt=0, description="Max size of a JSON request body.")
    max_json_depth: int = Field(default=16, ge=2, le=64, description="Max nesting of arrays/objects in JSON.")
    max_json_string_chars: int = Field(default=4096, ge=64, description="Max length of one JSON string.")
    max_json_object_keys: int = Field(default=64, ge=8, description="Max members of one JSON object.")
    max_json_items: int = Field(default=10_000, ge=100, description="Max values in one JSON document.")

    inspect_in_subprocess: bool = Field(default=True, description=(
        "Inspect uploaded checkpoints (load, build, one forward pass) in a separate process with a time and "
        "memory limit, never in the API process."))
    inspect_timeout_s: float = Field(default=60.0, gt=0, description="Time limit of one checkpoint inspection.")
    inspect_memory_bytes: int = Field(default=4096 * MiB, ge=256 * MiB,
                                      description="Address space the inspection process may add.")
    max_input_scale: float = Field(default=4.0, ge=1.0, description=(
        "A model's input_size may exceed its architecture's input size by at most this factor per side."))

    public_url: str = Field(default="", description=(
        "Base URL clients reach the API at (e.g. https://prune.example.com); Location headers and artifact "
        "URLs are built from it, never from the Host header. Empty: those links are relative paths."))
    metrics_token: str = Field(default="", description="When set, /metrics requires `Authorization: Bearer <it>`.")
    artifact_ttl_days: float = Field(default=0.0, ge=0, description=(
        "Delete a finished job's artifacts this many days after it finished (0: keep them forever)."))
    tenant_quota_bytes: int = Field(default=0, ge=0, description=(
        "Per-tenant storage quota over models, datasets and artifacts (0: unlimited)."))

    log_format: Literal["json", "text"] = Field(default="json", description="Worker log format.")
    worker_metrics_port: int = Field(default=0, ge=0, le=65535,
                                     description="Serve the worker's Prometheus metrics on this port (0: off).")
    device: str = Field(default="auto", description="Device the worker prunes on: auto, cpu, cuda, cuda:N.")
    worker_kind: Literal["auto", "gpu", "cpu"] = Field(
        default="auto", description="Capability a worker registers with (auto: gpu when CUDA is visible).")
    worker_heartbeat_interval_s: float = Field(default=10.0, gt=0,
                                               description="Period of a worker's heartbeat in the workers table.")
    worker_alive_after_s: float = Field(default=45.0, gt=0,
                                        description="A worker whose heartbeat is older than this is not alive.")
    fake_gpus: int = Field(default=0, ge=0, le=64, description="Testing: `worker --gpus` pretends this many GPUs "
                           "exist (CPU workers registered as GPU workers).")

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'simprune.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"
        self.public_url = self.public_url.strip().rstrip("/")
        if self.public_url and not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", self.public_url):
            raise ValueError(f"SIMPRUNE_PUBLIC_URL must be an http(s) URL without query, got {self.public_url!r}")
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("SIMPRUNE_STORAGE=s3 needs SIMPRUNE_S3_BUCKET")
        return self

    @property
    def rate_limit_redis(self) -> str:
        """The Redis URL shared rate limiting uses ('' for in-process buckets)."""
        if self.rate_limit_redis_url:
            return self.rate_limit_redis_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else ""

    @property
    def storage_dir(self) -> Path:
        """Where LocalStorage keeps checkpoints, datasets and artifacts."""
        return self.data_dir / "storage"

    @property
    def tmp_dir(self) -> Path:
        """Scratch space for uploads in flight and job outputs before they are stored."""
        return self.data_dir / "tmp"

    def ensure_dirs(self) -> None:
        """Create the data, storage and temp directories (and the SQLite parent directories)."""
        for d in (self.data_dir, self.storage_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (call ``get_settings.cache_clear()`` after changing the environment)."""
    return Settings()
