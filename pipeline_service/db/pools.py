"""Pools: slot counts (global or per tenant) and the leases step attempts hold.

A slot is taken with the pool's row locked (`FOR UPDATE`; SQLite serializes writers), so the
count of leases never passes the pool's size, whatever the number of workers and tenants."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pipeline_service.db.base import utcnow
from pipeline_service.db.models import Pool, PoolLease, Run, Tenant
from schemas.recording import RUN_FINISHED


class Acquired(StrEnum):
    YES = "yes"
    FULL = "full"
    UNKNOWN = "unknown"


def find_pool(session: Session, tenant_id: int | None, name: str) -> Pool | None:
    """The tenant's own pool of that name, else the global one."""
    rows = session.scalars(
        select(Pool).where(
            Pool.name == name,
            (Pool.tenant_id == tenant_id) | Pool.tenant_id.is_(None),
        )
    ).all()
    own = [p for p in rows if p.tenant_id is not None]
    return own[0] if own else (rows[0] if rows else None)


def set_pool(session: Session, tenant_id: int | None, name: str, slots: int, *, actor: str) -> Pool:
    query = select(Pool).where(Pool.name == name)
    query = query.where(
        Pool.tenant_id.is_(None) if tenant_id is None else Pool.tenant_id == tenant_id
    )
    pool = session.scalars(query).one_or_none()
    if pool is None:
        pool = Pool(tenant_id=tenant_id, name=name)
        session.add(pool)
    pool.slots, pool.updated_at, pool.updated_by = slots, utcnow(), actor
    session.flush()
    return pool


def delete_pool(session: Session, tenant_id: int | None, name: str) -> bool:
    query = select(Pool).where(Pool.name == name)
    query = query.where(
        Pool.tenant_id.is_(None) if tenant_id is None else Pool.tenant_id == tenant_id
    )
    pool = session.scalars(query).one_or_none()
    if pool is None:
        return False
    session.delete(pool)
    return True


@dataclass(frozen=True)
class PoolUse:
    name: str
    slots: int
    in_use: int
    scope: Literal["global", "tenant"]


def visible_pools(session: Session, tenant_id: int | None) -> list[PoolUse]:
    """Global pools and the tenant's own (None: global only), with the slots in use now."""
    query = select(Pool).where(Pool.tenant_id.is_(None))
    if tenant_id is not None:
        query = select(Pool).where((Pool.tenant_id == tenant_id) | Pool.tenant_id.is_(None))
    found = []
    for pool in session.scalars(query.order_by(Pool.name, Pool.tenant_id)):
        used = session.scalar(
            select(func.count()).select_from(PoolLease).where(PoolLease.pool_id == pool.id)
        )
        scope: Literal["global", "tenant"] = "global" if pool.tenant_id is None else "tenant"
        found.append(PoolUse(pool.name, pool.slots, int(used or 0), scope))
    return found


def missing_pools(session: Session, tenant_id: int, names: set[str]) -> list[str]:
    return sorted(name for name in names if find_pool(session, tenant_id, name) is None)


def acquire_slot(
    session: Session, tenant_name: str, pool_name: str, holder: str, workflow_id: str
) -> Acquired:
    tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
    pool = find_pool(session, tenant_id, pool_name)
    if pool is None:
        return Acquired.UNKNOWN
    session.execute(select(Pool.id).where(Pool.id == pool.id).with_for_update())
    if session.scalar(select(PoolLease.id).where(PoolLease.holder == holder)) is not None:
        return Acquired.YES  # a retried acquire whose first answer was lost
    # Leases of runs recorded finished were lost (a terminated workflow cannot release).
    finished = select(Run.workflow_id).where(Run.status.in_([s.value for s in RUN_FINISHED]))
    session.execute(
        delete(PoolLease).where(PoolLease.pool_id == pool.id, PoolLease.workflow_id.in_(finished))
    )
    used = session.scalar(
        select(func.count()).select_from(PoolLease).where(PoolLease.pool_id == pool.id)
    )
    if (used or 0) >= pool.slots:
        return Acquired.FULL
    session.add(PoolLease(pool_id=pool.id, holder=holder, workflow_id=workflow_id))
    return Acquired.YES


def release_slot(session: Session, holder: str) -> None:
    session.execute(delete(PoolLease).where(PoolLease.holder == holder))
