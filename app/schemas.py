"""Request and response bodies of the API (pydantic), with the examples shown in the OpenAPI docs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from simprune.jobspec import JobSpec

T = TypeVar("T")
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ModelOut(BaseModel):
    """An uploaded checkpoint."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={"examples": [{
            "id": "mdl_0d1f2e3c4b5a69788796a5b4", "arch": "cifar_resnet56", "num_classes": 10,
            "in_channels": 3, "input_size": [3, 32, 32], "params": 853018, "flops": 125485706,
            "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "size": 3440128,
            "filename": "resnet56.safetensors", "mean": None, "std": None, "created_at": "2026-11-22T10:00:00Z",
        }]},
    )

    id: str
    arch: str
    num_classes: int
    in_channels: int
    input_size: list[int]
    params: int
    flops: int
    sha256: str
    size: int
    filename: str
    mean: list[float] | None = None
    std: list[float] | None = None
    dry_run: dict[str, Any] | None = Field(default=None, description=(
        "For ONNX uploads: what pruning will see (prunable groups and channels, groups kept whole and why, "
        "operators, conversion fidelity)."))
    created_at: datetime


class DatasetOut(BaseModel):
    """An uploaded dataset."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={"examples": [{
            "id": "dst_5b4a69788796a5b40d1f2e3c", "format": "npz", "samples": 512, "classes": 10,
            "class_names": None, "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
            "size": 1573120, "filename": "calib.npz", "created_at": "2026-11-22T10:00:00Z",
        }]},
    )

    id: str
    format: str
    samples: int
    classes: int
    class_names: list[str] | None = None
    sha256: str
    size: int
    filename: str
    created_at: datetime


class DeviceProfileOut(BaseModel):
    """An uploaded device latency profile (its metadata; GET /v1/device-profiles/{id} adds the profile)."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={"examples": [{
            "id": "prf_3c4b5a69788796a5b40d1f2e", "name": "jetson-orin-cpu", "arch": "cifar_resnet56",
            "input_size": [3, 32, 32], "batch_size": 1, "device_type": "cpu", "device_name": "ARM Cortex-A78AE",
            "sha256": "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9", "size": 48213,
            "filename": "orin.json", "created_at": "2026-11-26T10:00:00Z",
        }]},
    )

    id: str
    name: str
    arch: str = Field(description="The architecture it was measured for; a job's model must have the same.")
    input_size: list[int] = Field(description="The input size it was measured at; a job's model must match.")
    batch_size: int
    device_type: str = Field(description="cpu or cuda")
    device_name: str
    sha256: str
    size: int
    filename: str
    created_at: datetime


class DeviceProfileDetail(DeviceProfileOut):
    """A device profile with its content (``simprune-device-profile/1``, see simprune.profiles)."""

    profile: dict[str, Any] = Field(description="The profile as uploaded (validated): environment, dense_ms, "
                                                "groups, blocks...")


class JobCreate(JobSpec):
    """A job on an uploaded model (JSON body of POST /v1/jobs): the engine's :class:`simprune.jobspec.JobSpec`
    plus the ids of the model, the datasets and the device profile. ``train_dataset_id`` defaults to the
    calibration dataset when fine-tuning or training. ``target_speedup`` needs ``device_profile_id`` or
    ``latency_profile: "worker"``."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False,
        json_schema_extra={"examples": [{
            "model_id": "mdl_0d1f2e3c4b5a69788796a5b4", "method": "qsfm", "target_flops_reduction": 0.5,
            "calibration_dataset_id": "dst_5b4a69788796a5b40d1f2e3c", "options": {},
        }]},
    )

    model_id: str = Field(max_length=64)
    calibration_dataset_id: str | None = Field(default=None, max_length=64,
                                               description="Dataset for data-driven methods and compensation.")
    eval_dataset_id: str | None = Field(default=None, max_length=64,
                                        description="Dataset to measure accuracy before/after.")
    train_dataset_id: str | None = Field(default=None, max_length=64, description=(
        "Training data for fine-tuning and the training methods (default: the calibration dataset)."))
    device_profile_id: str | None = Field(default=None, max_length=64, description=(
        "An uploaded device profile (POST /v1/device-profiles) for a latency target such as target_speedup; "
        "it must be measured for the model's architecture and input size. Alternatively latency_profile "
        "'worker' measures one on the worker."))
    time_limit_s: float | None = Field(
        default=None, gt=0, le=30 * 24 * 3600,
        description="Fail the job when it runs longer than this (capped by the server's limit).")

    def spec(self) -> JobSpec:
        """The engine's part of the request."""
        return JobSpec.model_validate(self.model_dump(include=set(JobSpec.model_fields)))


class ArtifactOut(BaseModel):
    """A file produced by a succeeded job."""

    name: str
    size: int
    sha256: str
    content_type: str
    url: str


class JobOut(BaseModel):
    """A job's state; ``result`` is the engine's report once it succeeded."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "job_8796a5b40d1f2e3c4b5a6978", "status": "running", "stage": "prune", "progress": 0.42,
        "model_id": "mdl_0d1f2e3c4b5a69788796a5b4", "method": "l1", "spec": {"target_flops_reduction": 0.5},
        "error": None, "result": None, "artifacts": [], "attempts": 1, "cancel_requested": False,
        "created_at": "2026-11-22T10:00:00Z", "started_at": "2026-11-22T10:00:01Z", "finished_at": None,
        "heartbeat_at": "2026-11-22T10:00:09Z",
    }]})

    id: str
    status: JobStatus
    stage: str | None
    progress: float
    progress_detail: dict[str, Any] | None = Field(default=None, description=(
        "Progress of the current stage: phase, and either training (epoch, epochs, step, steps, loss, lr, top1 "
        "as a fraction in [0, 1] after an epoch) or counts (what, done, total: evaluation batches, groups scored, "
        "sensitivity probes, groups selected or pruned sequentially, exports; step names the sub-step); eta_s "
        "(seconds) where it can be estimated."))
    model_id: str | None
    calibration_dataset_id: str | None = None
    eval_dataset_id: str | None = None
    train_dataset_id: str | None = None
    device_profile_id: str | None = None
    method: str = Field(description="The job's method (also in ``spec``).")
    spec: dict[str, Any] = Field(description="The validated job spec (simprune.jobspec.JobSpec), with time_limit_s.")
    error: str | None
    result: dict[str, Any] | None
    artifacts: list[ArtifactOut]
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``cursor`` to get the next one (null at the end)."""

    items: list[T]
    next_cursor: str | None = None
