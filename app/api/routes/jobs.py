"""/v1/jobs: submit (JSON or one-call multipart), list, inspect, follow (SSE), cancel, delete, download
artifacts."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep, get_owned, in_thread, public_link
from app.api.limits import JsonLimits, finite_float, json_body, loads_limited
from app.api.pagination import page_rows, paginate
from app.api.problems import Problem
from app.api.ratelimit import STREAM_LEASE_S, acquire_stream, rate_limit_jobs, rate_limit_reads, release_stream
from app.api.routes.datasets import get_owned_dataset
from app.api.routes.models import get_owned_model
from app.core.celery import enqueue_job
from app.core.config import Settings
from app.core.db import session_factory
from app.models import TERMINAL_STATUSES, Artifact, DeviceProfile, Job, Model, new_id, utcnow
from app.schemas import ArtifactOut, JobCreate, JobOut, JobStatus, Page
from app.services.resources import check_quota, create_model, get_inspector
from app.services.sweeper import remove_artifacts
from app.services.uploads import parse_multipart
from app.storage import Storage
from simprune.methods.registry import method_class

log = logging.getLogger("simprune.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(rate_limit_reads)])

JSON_FIELDS = ("options", "finetune", "compensation", "exports")
"""Multipart job fields that carry JSON."""

SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/JobCreate"},
                "examples": {
                    "flops": {"summary": "Halve the FLOPs with QSFM", "value": {
                        "model_id": "mdl_0d1f2e3c4b5a69788796a5b4", "method": "qsfm",
                        "target_flops_reduction": 0.5, "calibration_dataset_id": "dst_5b4a69788796a5b40d1f2e3c"}},
                    "ratio": {"summary": "Remove 30% of the filters by L1 norm", "value": {
                        "model_id": "mdl_0d1f2e3c4b5a69788796a5b4", "method": "l1", "pruning_ratio": 0.3}},
                    "speedup": {"summary": "Twice as fast on the device of an uploaded profile", "value": {
                        "model_id": "mdl_0d1f2e3c4b5a69788796a5b4", "method": "l1", "target_speedup": 2.0,
                        "device_profile_id": "prf_3c4b5a69788796a5b40d1f2e"}},
                },
            },
            "multipart/form-data": {"schema": {
                "type": "object",
                "required": ["file", "arch", "method"],
                "description": "One call: the checkpoint plus the job fields (options/finetune/compensation/"
                               "exports as JSON strings).",
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "arch": {"type": "string", "example": "cifar_resnet56"},
                    "num_classes": {"type": "integer"},
                    "input_size": {"type": "string", "example": "3,32,32"},
                    "method": {"type": "string", "example": "l1"},
                    "target_flops_reduction": {"type": "number", "example": 0.5},
                    "pruning_ratio": {"type": "string", "example": "0.3"},
                    "target_speedup": {"type": "number", "example": 2.0},
                    "device_profile_id": {"type": "string"},
                    "latency_profile": {"type": "string", "enum": ["worker"]},
                    "calibration_dataset_id": {"type": "string"},
                    "eval_dataset_id": {"type": "string"},
                    "train_dataset_id": {"type": "string"},
                    "options": {"type": "string", "example": "{}"},
                    "finetune": {"type": "string"},
                },
            }},
        },
    }
}


def artifact_out(request: Request, job_id: str, a: Artifact) -> ArtifactOut:
    """An artifact with its download URL."""
    url = public_link(request, request.app.url_path_for("download_artifact", job_id=job_id, name=a.name))
    return ArtifactOut(name=a.name, size=a.size, sha256=a.sha256, content_type=a.content_type, url=url)


def job_out(request: Request, job: Job) -> JobOut:
    """The public view of ``job``."""
    return JobOut(
        id=job.id, status=job.status, stage=job.stage, progress=job.progress, model_id=job.model_id,  # type: ignore[arg-type]
        progress_detail=job.progress_detail,
        calibration_dataset_id=job.calibration_dataset_id, eval_dataset_id=job.eval_dataset_id,
        train_dataset_id=job.train_dataset_id, device_profile_id=job.device_profile_id,
        method=str(job.spec.get("method", "")), spec=job.spec,
        error=job.error, result=job.result,
        artifacts=[artifact_out(request, job.id, a) for a in job.artifacts], attempts=job.attempts,
        cancel_requested=job.cancel_requested, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, heartbeat_at=job.heartbeat_at,
    )


def get_owned_job(session: Session, tenant_id: str, job_id: str, deleted_ok: bool = False) -> Job:
    """The tenant's job ``job_id``; 404 when absent or owned by another tenant, 410 once deleted."""
    job = get_owned(session, Job, tenant_id, job_id, "job")
    if job.deleted_at is not None and not deleted_ok:
        raise Problem(410, f"job '{job_id}' was deleted", "gone", deleted_at=job.deleted_at)
    return job


def _accepted(request: Request, job: Job, status: int = 202) -> JSONResponse:
    body = job_out(request, job).model_dump(mode="json")
    location = public_link(request, request.app.url_path_for("get_job", job_id=job.id))
    return JSONResponse(body, status_code=status, headers={"Location": location})


def _existing_for_key(session: Session, tenant_id: str, key: str | None) -> Job | None:
    if not key:
        return None
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


# where the spec's data requirements point in the request
_DATA_FIELDS = {"calibration": "calibration_dataset_id", "training": "train_dataset_id"}


@dataclass(frozen=True)
class _ProfileRef:
    """What job validation needs of a device profile."""

    id: str
    arch: str
    input_size: list[int]


@dataclass
class _Resolved:
    """A validated request: the stored spec, the datasets it runs on and its device profile."""

    spec: dict[str, Any]
    calibration_dataset_id: str | None
    eval_dataset_id: str | None
    train_dataset_id: str | None
    profile: _ProfileRef | None = None

    @property
    def device_profile_id(self) -> str | None:
        """The id of the job's uploaded device profile."""
        return self.profile.id if self.profile is not None else None

    def same_as(self, job: Job) -> bool:
        """Whether ``job`` was created from the same job fields (for Idempotency-Key replays)."""
        return (job.spec == self.spec and job.calibration_dataset_id == self.calibration_dataset_id
                and job.eval_dataset_id == self.eval_dataset_id and job.train_dataset_id == self.train_dataset_id
                and job.device_profile_id == self.device_profile_id)

    def check_model(self, model: Model) -> None:
        """422 naming ``device_profile_id`` unless the profile was measured for ``model``'s architecture and
        input size (its latency table describes no other network)."""
        prf = self.profile
        if prf is not None and (prf.arch != model.arch or list(prf.input_size) != list(model.input_size)):
            raise _field_problem([("device_profile_id", (
                f"device profile '{prf.id}' was measured for {prf.arch} at input size {list(prf.input_size)}, "
                f"but the model is {model.arch} at input size {list(model.input_size)}; measure one with "
                f"`simprune profile --arch {model.arch}` or use latency_profile 'worker'"))])


def _resolve(session: Session, tenant_id: str, req: JobCreate) -> _Resolved:
    """Check the datasets and the device profile exist for the tenant, the datasets meet the spec's data
    requirements and a latency target has a profile (422 naming the field)."""
    spec = req.spec()
    for name in ("calibration_dataset_id", "eval_dataset_id", "train_dataset_id"):
        if getattr(req, name):
            get_owned_dataset(session, tenant_id, getattr(req, name))
    train_id = None
    if spec.finetune is not None or method_class(spec.method).trains:
        train_id = req.train_dataset_id or req.calibration_dataset_id
    errors = spec.data_errors(req.calibration_dataset_id is not None, train_id is not None)
    if errors:
        raise _field_problem([(_DATA_FIELDS.get(name, name), msg) for name, msg in errors])
    profile = _latency_profile(session, tenant_id, req)
    stored = {**spec.model_dump(mode="json"), "time_limit_s": req.time_limit_s}
    return _Resolved(stored, req.calibration_dataset_id, req.eval_dataset_id, train_id, profile)


def _latency_profile(session: Session, tenant_id: str, req: JobCreate) -> _ProfileRef | None:
    """The tenant's device profile the job names (None without one); 422 naming the field when it does not
    exist or the latency fields do not fit together (a latency target needs exactly one profile)."""
    worker = req.latency_profile == "worker"
    if req.device_profile_id and worker:
        raise _field_problem([("device_profile_id", "give either device_profile_id or latency_profile 'worker', "
                                                    "not both")])
    if req.target_speedup is not None and not (req.device_profile_id or worker):
        raise _field_problem([("target_speedup", "a latency target needs a device profile: give "
                                                 "device_profile_id (POST /v1/device-profiles) or latency_profile "
                                                 "'worker' (measured on the worker)")])
    if not req.device_profile_id:
        return None
    row = session.get(DeviceProfile, req.device_profile_id)
    if row is None or row.tenant_id != tenant_id:
        raise _field_problem([("device_profile_id", f"device profile '{req.device_profile_id}' not found")])
    return _ProfileRef(row.id, row.arch, list(row.input_size))


def _field_problem(errors: list[tuple[str, str]]) -> Problem:
    items = [{"loc": ["body", name], "msg": msg, "type": "value_error"} for name, msg in errors]
    return Problem(422, "; ".join(f"{name}: {msg}" for name, msg in errors), "validation-error",
                   "Invalid request", errors=items)


def _create_job(
    request: Request, session: Session, settings: Settings, tenant_id: str, model_id: str, job_in: _Resolved,
    idempotency_key: str | None,
) -> JSONResponse:
    job = Job(
        id=new_id("job"), tenant_id=tenant_id, model_id=model_id,
        calibration_dataset_id=job_in.calibration_dataset_id, eval_dataset_id=job_in.eval_dataset_id,
        train_dataset_id=job_in.train_dataset_id, device_profile_id=job_in.device_profile_id, spec=job_in.spec,
        status="queued", progress=0.0, idempotency_key=idempotency_key, cancel_requested=False, attempts=0,
        enqueued_at=utcnow(),
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won the race
        session.rollback()
        existing = _existing_for_key(session, tenant_id, idempotency_key)
        if existing is None:  # a referenced model or dataset was deleted after it was checked
            raise Problem(409, "the job's model, a dataset or its device profile was deleted while the job was being "
                               "created",
                          "conflict") from None
        return _accepted(request, existing, 200)
    try:
        if enqueue_job(settings, job.id, job.spec) is None:  # device cuda, no GPU worker alive: failed, says why
            session.refresh(job)
    except Exception as exc:  # broker down: the job must not stay queued forever
        log.exception("could not enqueue job %s", job.id)
        job.status, job.error, job.finished_at = "failed", f"could not enqueue the job: {exc}", utcnow()
        session.commit()
        raise Problem(503, "the job queue is unavailable; try again later", "queue-unavailable",
                      job_id=job.id) from None
    return _accepted(request, job)


def _replay_or_conflict(request: Request, session: Session, existing: Job, job_in: _Resolved,
                        model_sha256: str | None = None) -> JSONResponse:
    """200 with the earlier job when the request repeats it (same fields; for a one-call upload also the same
    checkpoint bytes), 409 when the key was used for another request."""
    same_model = True
    if model_sha256 is not None:
        model = session.get(Model, existing.model_id) if existing.model_id else None
        same_model = model is not None and model.sha256 == model_sha256
    if not (same_model and job_in.same_as(existing)):
        raise Problem(409, "this Idempotency-Key was used for a different request", "idempotency-conflict",
                      job_id=existing.id)
    return _accepted(request, existing, 200)


PENDING_MODEL = "pending-upload"


def _request_from_form(fields: dict[str, str], limits: JsonLimits) -> JobCreate:
    data: dict[str, Any] = {"model_id": PENDING_MODEL}
    for name in JobCreate.model_fields:
        if name in fields and name != "model_id" and fields[name].strip() != "":
            raw = fields[name].strip()
            data[name] = loads_limited(raw, limits, name) if name in JSON_FIELDS else raw
    for name in ("pruning_ratio", "target_flops_reduction", "target_speedup", "time_limit_s"):
        if data.get(name) not in (None, "auto"):
            data[name] = finite_float(data[name], name)
    try:
        return JobCreate.model_validate(data, strict=False)
    except ValidationError as exc:
        raise _validation_problem(exc) from None


def _validation_problem(exc: ValidationError) -> Problem:
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)
    return Problem(422, detail[:2000], "validation-error", "Invalid request", errors=errors[:20])


@router.post("", status_code=202, response_model=JobOut, openapi_extra=SUBMIT_BODY,
             dependencies=[Depends(rate_limit_jobs)], summary="Submit a job",
             responses={200: {"description": "an earlier job with the same Idempotency-Key"},
                        404: {"description": "model or dataset not found"},
                        409: {"description": "the Idempotency-Key was used for a different request"},
                        422: {"description": "the job is invalid (the field is named)"},
                        429: {"description": "rate limited"}, 503: {"description": "queue down"}})
async def submit_job(
    request: Request, session: SessionDep, settings: SettingsDep, storage: StorageDep, tenant_id: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Queue a pruning job (JSON on an uploaded model, or multipart with the checkpoint in the same call).

    The job is validated completely before it is accepted: unknown, mistyped or out-of-range method options,
    missing data and invalid fine-tuning settings get a 422 naming the field. With an ``Idempotency-Key``
    header, repeating the request returns the job created the first time (409 if the request differs).
    """
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        return await _submit_multipart(request, session, settings, storage, tenant_id, idempotency_key)
    if not ctype.startswith("application/json"):
        raise Problem(415, "send application/json (job on an uploaded model) or multipart/form-data "
                           "(checkpoint + job fields)", "unsupported-media-type")
    body = await json_body(request, JsonLimits.from_settings(settings))
    try:
        req = JobCreate.model_validate(body)
    except ValidationError as exc:
        raise _validation_problem(exc) from None
    return await in_thread(session, _submit_json, request, session, settings, tenant_id, req, idempotency_key)


async def _submit_multipart(request: Request, session: Session, settings: Settings, storage: Storage,
                            tenant_id: str, idempotency_key: str | None) -> Response:
    form = await parse_multipart(request, settings.tmp_dir, {"file": settings.max_checkpoint_bytes},
                                 settings.max_form_field_bytes)
    try:
        req = _request_from_form(form.fields, JsonLimits.from_settings(settings))
        job_in = await in_thread(session, _resolve, session, tenant_id, req)
        existing = await in_thread(session, _existing_for_key, session, tenant_id, idempotency_key)
        if existing is not None:
            upload = form.files.get("file")
            return await in_thread(session, _replay_or_conflict, request, session, existing, job_in,
                                   upload.sha256 if upload else "")
        await in_thread(session, check_quota, session, settings, tenant_id, 0, 409)
        model = await create_model(form, tenant_id, session, settings, storage, request.app.state.metrics,
                                   get_inspector(settings, request.app.state))
        try:
            job_in.check_model(model)
        except Problem:  # refused: the checkpoint uploaded for this job is not kept
            await in_thread(session, _discard_model, session, storage, model)
            raise
    finally:
        form.cleanup()
    return await in_thread(session, _create_job, request, session, settings, tenant_id, model.id, job_in,
                           idempotency_key)


def _discard_model(session: Session, storage: Storage, model: Model) -> None:
    """Delete a model created for a job that was then refused (row and file)."""
    key = model.storage_key
    session.delete(session.merge(model))
    session.commit()
    storage.delete(key)


def _submit_json(request: Request, session: Session, settings: Settings, tenant_id: str, req: JobCreate,
                 idempotency_key: str | None) -> JSONResponse:
    model = get_owned_model(session, tenant_id, req.model_id)
    job_in = _resolve(session, tenant_id, req)
    job_in.check_model(model)
    existing = _existing_for_key(session, tenant_id, idempotency_key)
    if existing is not None:
        if existing.model_id != req.model_id:
            raise Problem(409, "this Idempotency-Key was used for a different request", "idempotency-conflict",
                          job_id=existing.id)
        return _replay_or_conflict(request, session, existing, job_in)
    check_quota(session, settings, tenant_id, 0, 409)
    return _create_job(request, session, settings, tenant_id, req.model_id, job_in, idempotency_key)


@router.get("", response_model=Page[JobOut], summary="List jobs")
def list_jobs(request: Request, session: SessionDep, tenant_id: TenantDep, status: JobStatus | None = None,
              cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 50) -> Page[JobOut]:
    """The tenant's jobs, newest first, optionally only those with ``status``."""
    stmt = select(Job).where(Job.tenant_id == tenant_id, Job.deleted_at.is_(None))
    if status:
        stmt = stmt.where(Job.status == status)
    stmt = paginate(stmt, Job, cursor, limit).options(selectinload(Job.artifacts))
    rows, nxt = page_rows(list(session.scalars(stmt)), limit)
    return Page[JobOut](items=[job_out(request, r) for r in rows], next_cursor=nxt)


def _load_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id, options=[joinedload(Job.artifacts)])  # one query, artifacts included
    if job is None or job.tenant_id != tenant_id:
        raise Problem(404, f"job '{job_id}' not found", "not-found")
    return get_owned_job(session, tenant_id, job_id)


@router.get("/{job_id}", response_model=JobOut, summary="Get a job")
async def get_job(job_id: str, request: Request, session: SessionDep, tenant_id: TenantDep) -> Response:
    """Status, stage, progress, timestamps, error, the report and the artifacts of one job."""
    job = await in_thread(session, _load_job, session, tenant_id, job_id)  # the one trip to the thread pool
    return Response(job_out(request, job).model_dump_json(), media_type="application/json")


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, summary="Cancel a job",
             responses={409: {"description": "the job already finished"}})
def cancel_job(job_id: str, request: Request, session: SessionDep, tenant_id: TenantDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next stage or batch boundary."""
    job = get_owned_job(session, tenant_id, job_id)
    if job.status in TERMINAL_STATUSES:
        raise Problem(409, f"job '{job_id}' already {job.status}", "conflict", job_status=job.status)
    now = utcnow()
    # compare-and-set, so a worker claiming the job concurrently cannot be overwritten
    done = session.execute(
        update(Job).where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now, error="cancelled by the user")
    ).rowcount
    if not done:
        session.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True))
    session.commit()
    session.refresh(job)
    return job_out(request, job)


@router.delete("/{job_id}", status_code=204, summary="Delete a job and its artifacts",
               responses={404: {"description": "not found"}})
def delete_job(job_id: str, session: SessionDep, settings: SettingsDep, storage: StorageDep,
               tenant_id: TenantDep) -> Response:
    """Cancel the job if it is queued or running, delete its artifacts from storage and hide it: later requests
    for it answer 410. The row stays as an audit record (``deleted_at``). Deleting it again is a no-op."""
    job = get_owned_job(session, tenant_id, job_id, deleted_ok=True)
    if job.deleted_at is not None:
        return Response(status_code=204)
    now = utcnow()
    # one compare-and-set: a worker finishing concurrently either stored its result first (and its artifacts
    # are removed below) or finds the job no longer running and discards its own files
    session.execute(update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
                    .values(status="cancelled", cancel_requested=True, finished_at=now,
                            error="cancelled: the job was deleted"))
    session.execute(update(Job).where(Job.id == job_id, Job.deleted_at.is_(None)).values(deleted_at=now))
    session.commit()
    try:
        remove_artifacts(settings, storage, job_id)
    except Exception as exc:  # noqa: BLE001 - the sweeper retries; the job is already hidden
        log.warning("job %s deleted; its artifacts will be removed by the sweeper: %s", job_id, exc)
    log.info("job %s deleted by tenant %s", job_id, tenant_id, extra={"job_id": job_id})
    return Response(status_code=204)


def _snapshot(url: str, job_id: str) -> dict[str, Any] | None:
    with session_factory(url)() as s:
        job = s.get(Job, job_id)
        if job is None or job.deleted_at is not None:
            return None
        return {"id": job.id, "status": job.status, "stage": job.stage, "progress": round(job.progress, 4),
                "progress_detail": job.progress_detail, "error": job.error}


@router.get("/{job_id}/events", summary="Follow a job (server-sent events)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"example": (
                'event: progress\ndata: {"id": "job_...", "status": "running", "stage": "prune", '
                '"progress": 0.4, "error": null}\n\n')}}}})
async def job_events(job_id: str, request: Request, session: SessionDep, settings: SettingsDep,
                     tenant_id: TenantDep) -> StreamingResponse:
    """``progress`` events whenever status/stage/progress change, then one ``end`` event when it finishes.
    A tenant may hold ``max_event_streams_per_tenant`` streams at once (429 with Retry-After beyond)."""
    await in_thread(session, get_owned_job, session, tenant_id, job_id)
    url = settings.database_url
    slot = new_id("sse")
    await run_in_threadpool(acquire_stream, request, settings, tenant_id, slot)

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in _events(request, url, job_id, tenant_id, slot):
                yield event
        finally:  # also when the client went away and the stream was cancelled
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(release_stream, request, tenant_id, slot)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(request: Request, url: str, job_id: str, tenant_id: str, slot: str) -> AsyncIterator[str]:
    """The event stream of one job; renews the stream's slot lease while it runs."""
    last: dict[str, Any] | None = None
    last_sent = renewed = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        snap = await run_in_threadpool(_snapshot, url, job_id)
        if snap is None:
            yield 'event: end\ndata: {"status": "deleted"}\n\n'
            return
        if snap != last:
            last, last_sent = snap, time.monotonic()
            yield f"event: progress\ndata: {json.dumps(snap)}\n\n"
        if snap["status"] in TERMINAL_STATUSES:
            yield f"event: end\ndata: {json.dumps(snap)}\n\n"
            return
        if time.monotonic() - last_sent > 15:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
        if time.monotonic() - renewed > STREAM_LEASE_S / 3:
            renewed = time.monotonic()
            try:
                await run_in_threadpool(acquire_stream, request, request.app.state.settings, tenant_id, slot)
            except Problem:  # the lease lapsed and other streams took the slots
                return
        await asyncio.sleep(0.5)


@router.get("/{job_id}/artifacts/{name}", name="download_artifact", summary="Download an artifact",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, 404: {"description": "not found"}})
def download_artifact(job_id: str, name: str, session: SessionDep, storage: StorageDep,
                      tenant_id: TenantDep) -> StreamingResponse:
    """Stream one artifact (model.pt2, model.onnx, weights.safetensors, plan.json, report.json, ...)."""
    job = get_owned_job(session, tenant_id, job_id)
    art = next((a for a in job.artifacts if a.name == name), None)
    if art is None and job.artifacts_expired_at is not None:
        raise Problem(410, f"the artifacts of job '{job_id}' were deleted after the retention period", "gone",
                      expired_at=job.artifacts_expired_at)
    if art is None:
        raise Problem(404, f"job '{job_id}' has no artifact '{name}'", "not-found")
    return _stream_file(storage, art)


def _stream_file(storage: Storage, art: Artifact) -> StreamingResponse:
    try:
        fh = storage.open(art.storage_key)
    except FileNotFoundError:
        raise Problem(410, f"artifact '{art.name}' is missing from storage", "gone") from None

    def chunks() -> Any:
        with fh:
            while chunk := fh.read(1024 * 1024):
                yield chunk

    return StreamingResponse(chunks(), media_type=art.content_type, headers={
        "Content-Length": str(art.size),
        "Content-Disposition": f'attachment; filename="{art.name}"',
        "ETag": f'"{art.sha256}"',
    })
