"""Shared route dependencies: settings, database session, storage and the current tenant.

They are ``async`` and do no blocking I/O in the event loop: a sync dependency would cost each request a trip
through the thread pool (and a wait for a free thread under load). The session is created without touching
the database; the tenant comes from a short-lived in-process cache of verified keys (``auth_cache_s``), so a
request whose key was seen recently needs no database round trip before its handler runs.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable
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


async def get_settings_dep(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A database session for one request (closed afterwards; routes commit explicitly). Creating it does no
    I/O; closing one that still holds a connection (a rollback) happens in the thread pool."""
    session = session_factory(request.app.state.settings.database_url)()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
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


async def get_storage_dep(request: Request) -> Storage:
    """The storage backend."""
    return request.app.state.storage


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage_dep)]


class AuthCache:
    """Verified keys (by the sha256 of the token) -> tenant, for ``ttl_s`` seconds. Only successes are cached;
    a revoked key is refused by every replica at most ``ttl_s`` seconds after ``simprune keys revoke``."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._lock = threading.Lock()
        self._items: dict[str, tuple[str, float]] = {}

    def get(self, token: str) -> str | None:
        if self.ttl_s <= 0:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        hit = self._items.get(digest)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def put(self, token: str, tenant_id: str) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._items) >= self.max_entries:
                self._items.clear()
            self._items[hashlib.sha256(token.encode()).hexdigest()] = (tenant_id, time.monotonic() + self.ttl_s)


def _verify(session: Session, token: str) -> str | None:
    """The tenant of ``token`` (recording its use at most once a minute), or None; ends the transaction."""
    key = verify_key(session, token)
    if key is None:
        session.rollback()
        return None
    now = utcnow()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        key.last_used_at = now
    tenant_id = key.tenant_id
    session.commit()  # the connection goes back to the pool before the handler runs
    return tenant_id


def _default_tenant(session: Session, tenant_id: str) -> None:
    ensure_tenant(session, tenant_id)
    session.commit()


async def get_tenant_id(request: Request, session: SessionDep, settings: SettingsDep) -> str:
    """The tenant of the request's API key (401 when missing or invalid); the default tenant without auth."""
    if not settings.auth_enabled:
        if not getattr(request.app.state, "default_tenant_ready", False):
            await run_in_threadpool(_default_tenant, session, settings.default_tenant)
            request.app.state.default_tenant_ready = True
        return settings.default_tenant
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="simprune"'}
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Problem(401, "missing API key: send 'Authorization: Bearer <key>'", "unauthorized",
                      headers=challenge)
    cache: AuthCache | None = getattr(request.app.state, "auth_cache", None)
    if cache is None:
        cache = request.app.state.auth_cache = AuthCache(settings.auth_cache_s)
    tenant_id = cache.get(token)
    if tenant_id is None:
        tenant_id = await run_in_threadpool(_verify, session, token)
        if tenant_id is None:
            raise Problem(401, "invalid or revoked API key", "unauthorized", headers=challenge)
        cache.put(token, tenant_id)
    return tenant_id


TenantDep = Annotated[str, Depends(get_tenant_id)]


Owned = TypeVar("Owned")


def get_owned(session: Session, model: type[Owned], tenant_id: str, row_id: str, label: str) -> Owned:
    """The tenant's ``model`` row ``row_id``; 404 when absent or owned by another tenant (ids never leak)."""
    row = session.get(model, row_id)
    if row is None or row.tenant_id != tenant_id:  # type: ignore[attr-defined]
        raise Problem(404, f"{label} '{row_id}' not found", "not-found")
    return row


def public_link(request: Request, path: str) -> str:
    """The link clients should follow to ``path`` (an app path such as ``/v1/jobs/job_1``): under
    ``SIMPRUNE_PUBLIC_URL`` when set, else the path alone. Never built from the request's Host header."""
    base = request.app.state.settings.public_url
    return f"{base}{path}" if base else path


def active_job_using(session: Session, *conditions: Any) -> str | None:
    """The id of a queued or running job matching any of ``conditions`` (e.g. ``Job.model_id == id``)."""
    from sqlalchemy import or_, select

    from app.models import Job

    return session.scalar(select(Job.id).where(or_(*conditions), Job.status.in_(("queued", "running"))).limit(1))
