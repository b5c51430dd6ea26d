"""/v1/device-profiles: upload, list, inspect and delete device latency profiles (``simprune profile`` output),
used by latency-targeted jobs (``target_speedup`` with ``device_profile_id``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep, active_job_using, get_owned
from app.api.pagination import page_rows, paginate
from app.api.problems import Problem
from app.api.ratelimit import rate_limit_reads, rate_limit_uploads
from app.models import DeviceProfile, Job
from app.schemas import DeviceProfileDetail, DeviceProfileOut, Page
from app.services.resources import create_device_profile
from app.services.uploads import parse_multipart
from app.storage import Storage
from simprune.profiles import MAX_PROFILE_BYTES, PROFILE_FORMAT, parse_profile

router = APIRouter(prefix="/v1/device-profiles", tags=["device profiles"], dependencies=[Depends(rate_limit_reads)])

PROFILE_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": f"the profile JSON ({PROFILE_FORMAT}, written by `simprune profile`), at "
                                        f"most {MAX_PROFILE_BYTES} bytes"},
                "name": {"type": "string", "example": "jetson-orin-cpu",
                         "description": "a label (default: the file name without its extension)"},
            },
        }}},
    }
}


def get_owned_profile(session: Session, tenant_id: str, profile_id: str) -> DeviceProfile:
    """The tenant's device profile ``profile_id``; 404 when absent or owned by another tenant."""
    return get_owned(session, DeviceProfile, tenant_id, profile_id, "device profile")


@router.post("", status_code=201, response_model=DeviceProfileOut, openapi_extra=PROFILE_UPLOAD_BODY,
             dependencies=[Depends(rate_limit_uploads)],
             summary="Upload a device profile (multipart/form-data: file = the profile JSON, optional name)",
             responses={413: {"description": f"file larger than {MAX_PROFILE_BYTES} bytes"},
                        429: {"description": "rate limited"},
                        422: {"description": "not a valid device profile (the problem is named)"}})
async def upload_device_profile(request: Request, session: SessionDep, settings: SettingsDep,
                                storage: StorageDep, tenant_id: TenantDep) -> DeviceProfileOut:
    """Stream the profile to disk (413 beyond its size limit), validate it against the profile format
    (422 naming the first invalid field) and store it; nothing is stored when it is refused."""
    form = await parse_multipart(request, settings.tmp_dir, {"file": MAX_PROFILE_BYTES},
                                 settings.max_form_field_bytes)
    try:
        row = await create_device_profile(form, tenant_id, session, settings, storage,
                                          metrics=request.app.state.metrics)
    finally:
        form.cleanup()
    return DeviceProfileOut.model_validate(row)


@router.get("", response_model=Page[DeviceProfileOut], summary="List device profiles")
def list_device_profiles(session: SessionDep, tenant_id: TenantDep, cursor: str | None = None,
                         limit: Annotated[int, Query(ge=1, le=100)] = 50) -> Page[DeviceProfileOut]:
    """The tenant's device profiles, newest first."""
    stmt = paginate(select(DeviceProfile).where(DeviceProfile.tenant_id == tenant_id), DeviceProfile, cursor,
                    limit)
    rows, nxt = page_rows(list(session.scalars(stmt)), limit)
    return Page[DeviceProfileOut](items=[DeviceProfileOut.model_validate(r) for r in rows], next_cursor=nxt)


def _read_profile(storage: Storage, row: DeviceProfile) -> DeviceProfileDetail:
    try:
        with storage.open(row.storage_key) as fh:
            raw = fh.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise Problem(410, f"device profile '{row.id}' is missing from storage", "gone") from None
    profile = parse_profile(raw).model_dump(mode="json")
    return DeviceProfileDetail.model_validate({**DeviceProfileOut.model_validate(row).model_dump(),
                                               "profile": profile})


@router.get("/{profile_id}", response_model=DeviceProfileDetail, summary="Get a device profile")
def get_device_profile(profile_id: str, session: SessionDep, storage: StorageDep,
                       tenant_id: TenantDep) -> DeviceProfileDetail:
    """One device profile: its metadata and the profile itself."""
    return _read_profile(storage, get_owned_profile(session, tenant_id, profile_id))


@router.delete("/{profile_id}", status_code=204, summary="Delete a device profile")
def delete_device_profile(profile_id: str, session: SessionDep, storage: StorageDep,
                          tenant_id: TenantDep) -> Response:
    """Delete the profile and its file; 409 while a queued or running job uses it."""
    row = get_owned_profile(session, tenant_id, profile_id)
    active = active_job_using(session, Job.device_profile_id == profile_id)
    if active:
        raise Problem(409, f"device profile '{profile_id}' is used by active job '{active}'", "conflict")
    key = row.storage_key
    session.delete(row)
    session.commit()
    storage.delete(key)
    return Response(status_code=204)
