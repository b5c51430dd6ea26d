"""/v1/datasets: upload, list, inspect and delete calibration/evaluation datasets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep, active_job_using, get_owned
from app.api.pagination import page_rows, paginate
from app.api.problems import Problem
from app.api.ratelimit import rate_limit_reads, rate_limit_uploads
from app.models import Dataset, Job
from app.schemas import DatasetOut, Page
from app.services.resources import create_dataset
from app.services.uploads import parse_multipart

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[Depends(rate_limit_reads)])

DATASET_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file"],
            "properties": {"file": {
                "type": "string", "format": "binary",
                "description": "ImageFolder .zip (class/ image files) or .npz with arrays x (N,C,H,W or "
                               "N,H,W,C) and y (N,)",
            }},
        }}},
    }
}


def get_owned_dataset(session: SessionDep, tenant_id: str, dataset_id: str) -> Dataset:
    """The tenant's dataset ``dataset_id``; 404 when absent or owned by another tenant."""
    return get_owned(session, Dataset, tenant_id, dataset_id, "dataset")


@router.post("", status_code=201, response_model=DatasetOut, openapi_extra=DATASET_UPLOAD_BODY,
             dependencies=[Depends(rate_limit_uploads)],
             summary="Upload a dataset",
             responses={413: {"description": "file too large"},
                        429: {"description": "rate limited"}, 422: {"description": "not a valid dataset"}})
async def upload_dataset(request: Request, session: SessionDep, settings: SettingsDep, storage: StorageDep,
                         tenant_id: TenantDep) -> DatasetOut:
    """Stream the archive to disk, check it (size, entry count, paths) and count samples and classes."""
    form = await parse_multipart(request, settings.tmp_dir, {"file": settings.max_dataset_bytes},
                                 settings.max_form_field_bytes)
    try:
        row = await create_dataset(form, tenant_id, session, settings, storage,
                                   metrics=request.app.state.metrics)
    finally:
        form.cleanup()
    return DatasetOut.model_validate(row)


@router.get("", response_model=Page[DatasetOut], summary="List datasets")
def list_datasets(session: SessionDep, tenant_id: TenantDep, cursor: str | None = None,
                  limit: Annotated[int, Query(ge=1, le=100)] = 50) -> Page[DatasetOut]:
    """The tenant's datasets, newest first."""
    stmt = paginate(select(Dataset).where(Dataset.tenant_id == tenant_id), Dataset, cursor, limit)
    rows, nxt = page_rows(list(session.scalars(stmt)), limit)
    return Page[DatasetOut](items=[DatasetOut.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/{dataset_id}", response_model=DatasetOut, summary="Get a dataset")
def get_dataset(dataset_id: str, session: SessionDep, tenant_id: TenantDep) -> DatasetOut:
    """One dataset."""
    return DatasetOut.model_validate(get_owned_dataset(session, tenant_id, dataset_id))


@router.delete("/{dataset_id}", status_code=204, summary="Delete a dataset")
def delete_dataset(dataset_id: str, session: SessionDep, storage: StorageDep, tenant_id: TenantDep) -> Response:
    """Delete the dataset and its file; 409 while a queued or running job uses it (for calibration,
    evaluation or training)."""
    row = get_owned_dataset(session, tenant_id, dataset_id)
    active = active_job_using(session, Job.calibration_dataset_id == dataset_id, Job.eval_dataset_id == dataset_id,
                              Job.train_dataset_id == dataset_id)
    if active:
        raise Problem(409, f"dataset '{dataset_id}' is used by active job '{active}'", "conflict")
    key = row.storage_key
    session.delete(row)
    session.commit()
    storage.delete(key)
    return Response(status_code=204)
