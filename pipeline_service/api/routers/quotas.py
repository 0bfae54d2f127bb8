"""Quotas: the platform admin sets a tenant's (`/v1/tenants/{tenant}/quota`); a tenant reads
its own with its current use (`/v1/quota`)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from pipeline_service.api.deps import PlatformAdminDep, ReaderDep, SessionDep, tenant_of
from pipeline_service.api.models import QuotaIn, QuotaPublic
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.db import quotas
from pipeline_service.db.models import Tenant
from pipeline_service.db.tenants import get_tenant
from schemas.pipeline import STEP_MODELS

admin_router = APIRouter(prefix="/v1/tenants", tags=["quotas"])
router = APIRouter(prefix="/v1/quota", tags=["quotas"])


def _public(session: Session, tenant: Tenant) -> QuotaPublic:
    quota = quotas.get_quota(session, tenant.id)
    return QuotaPublic(
        tenant=tenant.name,
        max_concurrent_runs=quota.max_concurrent_runs,
        max_queued_runs=quota.max_queued_runs,
        overflow_policy=quota.overflow_policy.value,
        allowed_step_types=list(quota.allowed_step_types)
        if quota.allowed_step_types is not None
        else None,
        max_steps_per_pipeline=quota.max_steps_per_pipeline,
        retry_after_seconds=quota.retry_after_seconds,
        active_runs=quotas.active_runs(session, tenant.id),
        waiting_runs=quotas.waiting_count(session, tenant.id),
    )


def _tenant(session: Session, name: str) -> Tenant:
    tenant = get_tenant(session, name)
    if tenant is None:
        raise not_found(f"tenant '{name}'")
    return tenant


@admin_router.put("/{tenant}/quota", response_model=QuotaPublic)
def set_quota(
    tenant: str, body: QuotaIn, admin: PlatformAdminDep, session: SessionDep
) -> QuotaPublic:
    """Set a tenant's quota (replaces the whole quota; omitted limits are unlimited)."""
    found = _tenant(session, tenant)
    if body.allowed_step_types is not None:
        unknown = sorted(set(body.allowed_step_types) - set(STEP_MODELS))
        if unknown:
            raise ProblemError(
                422,
                f"allowed_step_types: unknown step type '{unknown[0]}' "
                f"(known: {', '.join(sorted(STEP_MODELS))})",
            )
    quotas.set_quota(
        session,
        found.id,
        quotas.Quota(
            max_concurrent_runs=body.max_concurrent_runs,
            max_queued_runs=body.max_queued_runs,
            overflow_policy=quotas.OverflowPolicy(body.overflow_policy),
            allowed_step_types=tuple(body.allowed_step_types)
            if body.allowed_step_types is not None
            else None,
            max_steps_per_pipeline=body.max_steps_per_pipeline,
            retry_after_seconds=body.retry_after_seconds,
        ),
        actor=admin.actor,
    )
    session.commit()
    return _public(session, found)


@admin_router.get("/{tenant}/quota", response_model=QuotaPublic)
def get_quota(tenant: str, admin: PlatformAdminDep, session: SessionDep) -> QuotaPublic:
    return _public(session, _tenant(session, tenant))


@router.get("", response_model=QuotaPublic)
def own_quota(principal: ReaderDep, session: SessionDep) -> QuotaPublic:
    """The caller's tenant's quota, with the runs active and waiting now."""
    return _public(session, tenant_of(principal))
