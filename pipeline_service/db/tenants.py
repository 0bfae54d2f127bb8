"""Tenants and their API keys. Keys are stored as SHA-256 digests; the clear key exists only
in the answer to its creation."""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline_service.db.base import utcnow
from pipeline_service.db.models import ApiKey, Tenant

KEY_PREFIX = "lam_"


class Scope(StrEnum):
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"


SCOPE_RANK = {Scope.READ: 0, Scope.OPERATE: 1, Scope.ADMIN: 2}


def hash_key(clear: str) -> str:
    # Keys are 256-bit random: a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(clear.encode()).hexdigest()


def create_tenant(
    session: Session, name: str, *, actor: str, display_name: str | None = None
) -> Tenant:
    tenant = Tenant(name=name, display_name=display_name, created_by=actor)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.id)))


def create_api_key(
    session: Session, tenant: Tenant, name: str, scope: Scope, *, actor: str
) -> tuple[ApiKey, str]:
    """A new key for `tenant`: (its row, the clear key to show once)."""
    clear = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        tenant_id=tenant.id,
        name=name,
        prefix=clear[: len(KEY_PREFIX) + 6],
        key_hash=hash_key(clear),
        scope=scope.value,
        created_by=actor,
    )
    session.add(key)
    session.flush()
    return key, clear


def resolve_api_key(session: Session, clear: str) -> ApiKey | None:
    """The live key whose secret is `clear`, or None."""
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(clear))).one_or_none()
    if key is None or key.revoked_at is not None:
        return None
    return key


def list_api_keys(session: Session, tenant: Tenant) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)))


def revoke_api_key(session: Session, tenant: Tenant, name: str) -> ApiKey | None:
    key = session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant.id, ApiKey.name == name)
    ).one_or_none()
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
    return key
