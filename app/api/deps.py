"""Shared route dependencies: settings, database session, storage and the current tenant."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.problems import Problem
from app.core.config import Settings
from app.core.db import session_factory
from app.models import utcnow
from app.services.keys import ensure_tenant, verify_key
from app.storage import Storage

T = TypeVar("T")


def get_settings_dep(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A database session for one request (closed afterwards; routes commit explicitly)."""
    session = session_factory(request.app.state.settings.database_url)()
    try:
        yield session
    finally:
        session.close()


async def in_thread(session: Session, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking database work ``fn(*args)`` in the thread pool, then end the session's transaction so its
    connection returns to the pool (async handlers must never hold one across an ``await``)."""

    def call() -> T:
        try:
            out = fn(*args)
            session.commit()
            return out
        except BaseException:
            session.rollback()
            raise

    return await run_in_threadpool(call)


def get_storage_dep(request: Request) -> Storage:
    """The storage backend."""
    return request.app.state.storage


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage_dep)]


def get_tenant_id(request: Request, session: SessionDep, settings: SettingsDep) -> str:
    """The tenant of the request's API key (401 when missing or invalid); the default tenant without auth."""
    if not settings.auth_enabled:
        if not getattr(request.app.state, "default_tenant_ready", False):
            ensure_tenant(session, settings.default_tenant)
            session.commit()
            request.app.state.default_tenant_ready = True
        return settings.default_tenant
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="simprune"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "missing API key: send 'Authorization: Bearer <key>'", "unauthorized",
                      headers=challenge)
    key = verify_key(session, token.strip())
    if key is None:
        raise Problem(401, "invalid or revoked API key", "unauthorized", headers=challenge)
    now = utcnow()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        key.last_used_at = now
    tenant_id = key.tenant_id
    session.commit()  # ends the transaction: the connection goes back to the pool before the handler runs
    return tenant_id


TenantDep = Annotated[str, Depends(get_tenant_id)]


Owned = TypeVar("Owned")


def get_owned(session: Session, model: type[Owned], tenant_id: str, row_id: str, label: str) -> Owned:
    """The tenant's ``model`` row ``row_id``; 404 when absent or owned by another tenant (ids never leak)."""
    row = session.get(model, row_id)
    if row is None or row.tenant_id != tenant_id:  # type: ignore[attr-defined]
        raise Problem(404, f"{label} '{row_id}' not found", "not-found")
    return row
