"""Tenant quotas and the run queue: who may start how many runs, and which run waits next.

Admission is decided with the tenant's row locked (`SELECT ... FOR UPDATE` on PostgreSQL;
SQLite's BEGIN IMMEDIATE serializes every writer), so two launchers or dispatchers racing for
the last slot cannot both take it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from pipeline_service.db.base import utcnow
from pipeline_service.db.models import Run, Tenant, TenantQuota
from pipeline_service.db.recording import record_run_events
from schemas.recording import (
    RUN_FINISHED,
    RecordedRunStatus,
    RecordRunEventsInput,
    RunEvent,
    RunTransition,
)


class OverflowPolicy(StrEnum):
    QUEUE = "queue"
    """The run waits (QUEUED) and starts in priority, then arrival, order when a slot frees."""
    REJECT = "reject"
    """The trigger is refused: 429 with Retry-After."""
    DROP_OLDEST = "drop_oldest"
    """The run waits; when the queue is full its oldest run is CANCELLED with the reason."""


DROP_OLDEST_DEFAULT_DEPTH = 1
"""`drop_oldest` without `max_queued_runs` keeps the newest waiting run only."""


@dataclass(frozen=True)
class Quota:
    """A tenant's effective limits (None: unlimited)."""

    max_concurrent_runs: int | None = None
    max_queued_runs: int | None = None
    overflow_policy: OverflowPolicy = OverflowPolicy.QUEUE
    allowed_step_types: tuple[str, ...] | None = None
    max_steps_per_pipeline: int | None = None
    retry_after_seconds: int = 30

    @property
    def queue_depth(self) -> int | None:
        if self.overflow_policy == OverflowPolicy.DROP_OLDEST:
            return self.max_queued_runs or DROP_OLDEST_DEFAULT_DEPTH
        return self.max_queued_runs


def quota_of(row: TenantQuota | None) -> Quota:
    if row is None:
        return Quota()
    return Quota(
        max_concurrent_runs=row.max_concurrent_runs,
        max_queued_runs=row.max_queued_runs,
        overflow_policy=OverflowPolicy(row.overflow_policy),
        allowed_step_types=tuple(row.allowed_step_types)
        if row.allowed_step_types is not None
        else None,
        max_steps_per_pipeline=row.max_steps_per_pipeline,
        retry_after_seconds=row.retry_after_seconds,
    )


def get_quota(session: Session, tenant_id: int) -> Quota:
    return quota_of(session.get(TenantQuota, tenant_id))


def lock_quota(session: Session, tenant_id: int) -> Quota:
    """The tenant's quota, with the tenant's row locked until the transaction ends (one
    statement: the lock and the quota row)."""
    row = session.execute(
        select(Tenant.id, TenantQuota)
        .outerjoin(TenantQuota, TenantQuota.tenant_id == Tenant.id)
        .where(Tenant.id == tenant_id)
        .with_for_update(of=Tenant)
    ).one_or_none()
    return quota_of(row[1] if row is not None else None)


def set_quota(session: Session, tenant_id: int, quota: Quota, *, actor: str) -> TenantQuota:
    row = session.get(TenantQuota, tenant_id)
    if row is None:
        row = TenantQuota(tenant_id=tenant_id)
        session.add(row)
    row.max_concurrent_runs = quota.max_concurrent_runs
    row.max_queued_runs = quota.max_queued_runs
    row.overflow_policy = quota.overflow_policy.value
    row.allowed_step_types = (
        list(quota.allowed_step_types) if quota.allowed_step_types is not None else None
    )
    row.max_steps_per_pipeline = quota.max_steps_per_pipeline
    row.retry_after_seconds = quota.retry_after_seconds
    row.updated_at, row.updated_by = utcnow(), actor
    session.flush()
    return row


def definition_problems(quota: Quota, step_types: Sequence[str]) -> list[str]:
    """Why a pipeline with these steps (their types, in order) breaks the quota; [] if not."""
    problems = []
    if quota.max_steps_per_pipeline is not None and len(step_types) > quota.max_steps_per_pipeline:
        problems.append(
            f"the pipeline has {len(step_types)} steps; this tenant's quota allows "
            f"{quota.max_steps_per_pipeline}"
        )
    if quota.allowed_step_types is not None:
        for index, kind in enumerate(step_types):
            if kind not in quota.allowed_step_types:
                allowed = ", ".join(quota.allowed_step_types) or "none"
                problems.append(
                    f"steps[{index}].type: '{kind}' is not allowed for this tenant "
                    f"(allowed: {allowed})"
                )
    return problems


_ACTIVE = [s.value for s in RecordedRunStatus if s not in RUN_FINISHED]


def active_runs(session: Session, tenant_id: int) -> int:
    """Runs holding a concurrency slot: started (submitted) and not finished."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Run)
            .where(
                Run.tenant_id == tenant_id,
                Run.status.in_(_ACTIVE),
                Run.submitted_at.is_not(None),
            )
        )
        or 0
    )


def _waiting_query(tenant_id: int) -> Select[Run]:
    return select(Run).where(
        Run.tenant_id == tenant_id,
        Run.status == RecordedRunStatus.QUEUED.value,
        Run.submitted_at.is_(None),
    )


def waiting_runs(session: Session, tenant_id: int, limit: int | None = None) -> list[Run]:
    """The tenant's queue in start order: highest priority first, then oldest first."""
    query = _waiting_query(tenant_id).order_by(Run.priority.desc(), Run.id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def waiting_count(session: Session, tenant_id: int) -> int:
    return (
        session.scalar(select(func.count()).select_from(_waiting_query(tenant_id).subquery())) or 0
    )


def tenants_with_waiting_runs(session: Session) -> list[int]:
    return list(
        session.scalars(
            select(Run.tenant_id)
            .where(Run.status == RecordedRunStatus.QUEUED.value, Run.submitted_at.is_(None))
            .distinct()
        )
    )


def drop_oldest(session: Session, tenant_id: int, count: int, reason: str) -> list[Run]:
    """Cancel the `count` oldest waiting runs (lowest priority first) with `reason`."""
    oldest = list(
        session.scalars(
            _waiting_query(tenant_id).order_by(Run.priority, Run.id).limit(max(count, 0))
        )
    )
    for run in oldest:
        cancel_waiting(session, run, reason)
    return oldest


def cancel_waiting(session: Session, run: Run, reason: str) -> None:
    """End a run that never started: CANCELLED with `reason`, and its event."""
    end_run(session, run, RecordedRunStatus.CANCELLED, reason)


def end_run(session: Session, run: Run, status: RecordedRunStatus, reason: str) -> None:
    """Record the end of a run whose workflow cannot (never started, or closed without)."""
    now = utcnow()
    record_run_events(
        session,
        RecordRunEventsInput(
            workflow_id=run.workflow_id,
            events=[
                RunEvent(
                    event_id=str(uuid.uuid4()),
                    at=now,
                    run=RunTransition(status=status, at=now, error=reason),
                )
            ],
        ),
    )


def stalled_submissions(
    session: Session, before: datetime, *, after_id: int = 0, limit: int = 100
) -> list[Run]:
    """Runs given a slot before `before` whose workflow has not recorded its start (the
    process that took the slot may have died before starting the workflow), by row id from
    `after_id` on."""
    return list(
        session.scalars(
            select(Run)
            .where(
                Run.status == RecordedRunStatus.QUEUED.value,
                Run.submitted_at.is_not(None),
                Run.submitted_at < before,
                Run.id > after_id,
            )
            .order_by(Run.id)
            .limit(limit)
        )
    )
