"""/v1/models: upload, list, inspect and delete checkpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep, active_job_using, get_owned
from app.api.pagination import page_rows, paginate
from app.api.problems import Problem
from app.api.ratelimit import rate_limit_reads, rate_limit_uploads
from app.models import Job, Model
from app.schemas import ModelOut, Page
from app.services.resources import create_model, get_inspector
from app.services.uploads import parse_multipart

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(rate_limit_reads)])

MODEL_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file", "arch"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "state_dict as .safetensors or torch.save (.pt/.pth/.th)"},
                "arch": {"type": "string", "example": "cifar_resnet56",
                         "description": "a name from GET /v1/architectures"},
                "num_classes": {"type": "integer", "example": 10},
                "input_size": {"type": "string", "example": "3,32,32"},
                "mean": {"type": "string", "example": "0.4914,0.4822,0.4465"},
                "std": {"type": "string", "example": "0.247,0.2435,0.2616"},
            },
        }}},
    }
}


def get_owned_model(session: SessionDep, tenant_id: str, model_id: str) -> Model:
    """The tenant's model ``model_id``; 404 when absent or owned by another tenant."""
    return get_owned(session, Model, tenant_id, model_id, "model")


@router.post("", status_code=201, response_model=ModelOut, openapi_extra=MODEL_UPLOAD_BODY,
             dependencies=[Depends(rate_limit_uploads)],
             summary="Upload a checkpoint",
             responses={413: {"description": "file too large"},
                        429: {"description": "rate limited"}, 422: {"description": "not a valid checkpoint"}})
async def upload_model(request: Request, session: SessionDep, settings: SettingsDep, storage: StorageDep,
                       tenant_id: TenantDep) -> ModelOut:
    """Stream the checkpoint to disk, load it safely, build it into ``arch`` and count params/FLOPs (in a separate
    process with a time and memory limit; ``input_size`` may exceed the architecture's by a bounded factor)."""
    form = await parse_multipart(request, settings.tmp_dir, {"file": settings.max_checkpoint_bytes},
                                 settings.max_form_field_bytes)
    try:
        row = await create_model(form, tenant_id, session, settings, storage, request.app.state.metrics,
                                 get_inspector(settings, request.app.state))
    finally:
        form.cleanup()
    return ModelOut.model_validate(row)


@router.get("", response_model=Page[ModelOut], summary="List models")
def list_models(session: SessionDep, tenant_id: TenantDep, settings: SettingsDep,
                cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 50) -> Page[ModelOut]:
    """The tenant's models, newest first."""
    stmt = paginate(select(Model).where(Model.tenant_id == tenant_id), Model, cursor, limit)
    rows, nxt = page_rows(list(session.scalars(stmt)), limit)
    return Page[ModelOut](items=[ModelOut.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/{model_id}", response_model=ModelOut, summary="Get a model")
def get_model(model_id: str, session: SessionDep, tenant_id: TenantDep) -> ModelOut:
    """One model."""
    return ModelOut.model_validate(get_owned_model(session, tenant_id, model_id))


@router.delete("/{model_id}", status_code=204, summary="Delete a model")
def delete_model(model_id: str, session: SessionDep, storage: StorageDep, tenant_id: TenantDep) -> Response:
    """Delete the model and its file; 409 while a queued or running job uses it."""
    row = get_owned_model(session, tenant_id, model_id)
    active = active_job_using(session, Job.model_id == model_id)
    if active:
        raise Problem(409, f"model '{model_id}' is used by active job '{active}'", "conflict")
    key = row.storage_key
    session.delete(row)
    session.commit()
    storage.delete(key)
    return Response(status_code=204)
