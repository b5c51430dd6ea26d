"""API keys: ``sp_<prefix>_<secret>``; the database keeps only the prefix and ``sha256(key)``."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey, Tenant, new_id, utcnow

KEY_PREFIX = "sp_"


def hash_key(token: str) -> str:
    """Hex sha256 of the full key (keys are 256-bit random, so a plain hash is enough)."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(session: Session, name: str, tenant_id: str | None = None) -> tuple[ApiKey, str]:
    """Create a key (and a new tenant named ``name`` unless ``tenant_id`` is given); returns (row, plaintext)."""
    if tenant_id is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id
    elif session.get(Tenant, tenant_id) is None:
        session.add(Tenant(id=tenant_id, name=name))
        session.flush()
    prefix = secrets.token_hex(6)
    token = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=new_id("key"), tenant_id=tenant_id, name=name, prefix=prefix, key_hash=hash_key(token))
    session.add(row)
    session.flush()
    return row, token


def verify_key(session: Session, token: str) -> ApiKey | None:
    """The active key row for ``token``, or None (hash compared in constant time)."""
    if not token.startswith(KEY_PREFIX):
        return None
    prefix, sep, _ = token[len(KEY_PREFIX):].partition("_")
    if not sep or not prefix:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_key(token)):
        return None
    return row


def ensure_tenant(session: Session, tenant_id: str, name: str | None = None) -> Tenant:
    """The tenant ``tenant_id``, created if missing (used for the auth-disabled default tenant)."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        tenant = Tenant(id=tenant_id, name=name or tenant_id, created_at=utcnow())
        session.add(tenant)
        session.commit()
    return tenant


def list_keys(session: Session, tenant_id: str | None = None, include_revoked: bool = True) -> list[ApiKey]:
    """Every key (of ``tenant_id`` when given), oldest first; the secrets themselves are never stored."""
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_id is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(stmt))


def revoke_key(session: Session, ident: str) -> ApiKey | None:
    """Revoke the key whose id (``key_...``) or public prefix is ``ident`` (a full ``sp_<prefix>_...`` key is
    accepted too); returns the row (already revoked rows unchanged), None when no key matches."""
    ident = ident.strip()
    if ident.startswith(KEY_PREFIX):
        ident = ident[len(KEY_PREFIX):].partition("_")[0]
    row = session.get(ApiKey, ident) or session.scalar(select(ApiKey).where(ApiKey.prefix == ident))
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
