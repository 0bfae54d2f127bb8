"""Tenant secrets in the database: write, list names, delete, and resolve values (the last
only for the activity that runs a step). Every function takes the tenant: no query crosses."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline_service.db.base import utcnow
from pipeline_service.db.models import Tenant, TenantSecret
from pipeline_service.secrets.crypto import SecretBox


def put_secret(
    session: Session, box: SecretBox, tenant: Tenant, name: str, value: str, *, actor: str
) -> tuple[TenantSecret, bool]:
    """Create or replace; (row, True) when it is new."""
    row = get_secret(session, tenant.id, name)
    created = row is None
    if row is None:
        row = TenantSecret(tenant_id=tenant.id, name=name, created_by=actor)
        session.add(row)
    row.ciphertext = box.seal(tenant.id, name, value)
    row.updated_at, row.updated_by = utcnow(), actor
    session.flush()
    return row, created


def get_secret(session: Session, tenant_id: int, name: str) -> TenantSecret | None:
    return session.scalars(
        select(TenantSecret).where(TenantSecret.tenant_id == tenant_id, TenantSecret.name == name)
    ).one_or_none()


def list_secrets(session: Session, tenant_id: int) -> list[TenantSecret]:
    return list(
        session.scalars(
            select(TenantSecret)
            .where(TenantSecret.tenant_id == tenant_id)
            .order_by(TenantSecret.name)
        )
    )


def delete_secret(session: Session, tenant_id: int, name: str) -> bool:
    row = get_secret(session, tenant_id, name)
    if row is None:
        return False
    session.delete(row)
    return True


def resolve_secrets(
    session: Session, box: SecretBox, tenant_name: str, names: set[str]
) -> dict[str, str]:
    """Values of the named secrets of the tenant; names it does not have are absent."""
    rows = session.execute(
        select(TenantSecret)
        .join(Tenant, Tenant.id == TenantSecret.tenant_id)
        .where(Tenant.name == tenant_name, TenantSecret.name.in_(sorted(names)))
    ).scalars()
    return {row.name: box.open(row.tenant_id, row.name, row.ciphertext) for row in rows}
