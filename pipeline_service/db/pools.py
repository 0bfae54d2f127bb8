"""Pools: slot counts (global or per tenant) and the leases step attempts hold.

A slot is taken with the pool's row locked (`FOR UPDATE`; SQLite serializes writers), so the
count of leases never passes the pool's size, whatever the number of workers and tenants.
Attempts that find the pool full wait in line (`pool_waiters`): a freed slot goes to the one
that has waited longest, whichever asks first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pipeline_service.db.base import utcnow
from pipeline_service.db.models import Pool, PoolLease, PoolWaiter, Run, Tenant
from schemas.recording import RUN_FINISHED

WAITER_TTL = timedelta(seconds=15)
"""A waiter tries again at least every 2 s (workflows/pools.py): one not seen for this long
has stopped trying (its run ended, or the step was cancelled) and leaves the line."""


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
    now = utcnow()
    # Leases of runs recorded finished were lost (a terminated workflow cannot release);
    # waiters of finished runs, or that stopped trying, leave the line.
    finished = select(Run.workflow_id).where(Run.status.in_([s.value for s in RUN_FINISHED]))
    session.execute(
        delete(PoolLease).where(PoolLease.pool_id == pool.id, PoolLease.workflow_id.in_(finished))
    )
    session.execute(
        delete(PoolWaiter).where(
            PoolWaiter.pool_id == pool.id,
            PoolWaiter.workflow_id.in_(finished) | (PoolWaiter.last_seen < now - WAITER_TTL),
        )
    )
    used = session.scalar(
        select(func.count()).select_from(PoolLease).where(PoolLease.pool_id == pool.id)
    )
    free = pool.slots - (used or 0)
    line = list(
        session.scalars(
            select(PoolWaiter)
            .where(PoolWaiter.pool_id == pool.id)
            .order_by(PoolWaiter.since, PoolWaiter.id)
        )
    )
    mine = next((waiter for waiter in line if waiter.holder == holder), None)
    ahead = line.index(mine) if mine is not None else len(line)
    if ahead < free:  # first come, first served: only those ahead in line may go before
        if mine is not None:
            session.delete(mine)
        session.add(PoolLease(pool_id=pool.id, holder=holder, workflow_id=workflow_id))
        return Acquired.YES
    if mine is None:
        session.add(
            PoolWaiter(
                pool_id=pool.id, holder=holder, workflow_id=workflow_id, since=now, last_seen=now
            )
        )
    else:
        mine.last_seen = now
    return Acquired.FULL


@dataclass(frozen=True)
class PoolWait:
    pool: str
    since: datetime
    position: int
    """1: next in line."""


def waiting_steps(session: Session, workflow_id: str) -> dict[str, PoolWait]:
    """The run's step attempts waiting for a pool slot now, by activity id (`step` or
    `step#n`), with their place in their pool's line."""
    fresh = utcnow() - WAITER_TTL
    found: dict[str, PoolWait] = {}
    rows = session.execute(
        select(PoolWaiter, Pool.name)
        .join(Pool, Pool.id == PoolWaiter.pool_id)
        .where(PoolWaiter.workflow_id == workflow_id, PoolWaiter.last_seen >= fresh)
    ).all()
    for waiter, pool_name in rows:
        ahead = session.scalar(
            select(func.count())
            .select_from(PoolWaiter)
            .where(
                PoolWaiter.pool_id == waiter.pool_id,
                PoolWaiter.last_seen >= fresh,
                (PoolWaiter.since < waiter.since)
                | ((PoolWaiter.since == waiter.since) & (PoolWaiter.id < waiter.id)),
            )
        )
        activity_id = waiter.holder.removeprefix(f"{workflow_id}/")
        found[activity_id] = PoolWait(pool_name, waiter.since, int(ahead or 0) + 1)
    return found


def release_slot(session: Session, holder: str) -> None:
    session.execute(delete(PoolLease).where(PoolLease.holder == holder))
    session.execute(delete(PoolWaiter).where(PoolWaiter.holder == holder))
