"""Backfills: POST /v1/pipelines/{name}/backfills (or a dry run listing the dates), and
/v1/backfills/{id}: progress, pause, resume, cancel."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Response
from temporalio.service import RPCError

from activities.backfill import run_statuses
from pipeline_service.api.deps import OperatorDep, Principal, ReaderDep, ServicesDep, tenant_of
from pipeline_service.api.models import BackfillCreate, BackfillDryRun
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.api.routers.schedules import _temporal
from pipeline_service.api.services import Services
from pipeline_service.db.pipelines import get_pipeline, get_version
from pipeline_service.scheduling.backfill_plan import backfill_id, plan_page
from pipeline_service.scheduling.backfills import backfill_progress, signal_backfill, start_backfill
from pipeline_service.scheduling.fire_times import Cron
from schemas.pipeline import Schedule
from schemas.scheduling import BackfillProgress, BackfillSpec

router = APIRouter(tags=["backfills"])
DRY_RUN_LIMIT = 10_000
MAX_INTERVALS = 1_000_000


def _spec(
    services: Services, principal: Principal, name: str, body: BackfillCreate
) -> tuple[BackfillSpec, Schedule]:
    tenant = tenant_of(principal)
    with services.sessions() as session:
        pipeline = get_pipeline(session, tenant.id, name)
        if pipeline is None:
            raise not_found(f"pipeline '{name}'")
        version = get_version(session, pipeline, pipeline.current_version)
        raw = version.definition.get("schedule") if version else None
    if not raw:
        raise ProblemError(
            422, f"pipeline '{name}' has no schedule: a backfill needs its cron for the intervals"
        )
    schedule = Schedule.model_validate(raw)
    start, end = (_instant(v, schedule) for v in (body.start, body.end))
    if end <= start:
        raise ProblemError(
            422, f"end ({end.isoformat()}) must be after start ({start.isoformat()})"
        )
    fires = Cron.of(schedule).next_fires(start, 2)
    estimate = (end - start) / max(fires[1] - fires[0], timedelta(seconds=1))
    if estimate > MAX_INTERVALS:
        raise ProblemError(
            422,
            f"about {int(estimate):,} intervals from {start.isoformat()} to {end.isoformat()}: "
            f"a backfill covers at most {MAX_INTERVALS:,}; split the range",
        )
    spec = BackfillSpec(
        tenant=tenant.name,
        pipeline=name,
        start=start,
        end=end,
        max_concurrency=body.max_concurrency,
        reprocess=body.reprocess,
        order=body.order,
        params=body.params,
    )
    return spec, schedule


def _instant(value: datetime | date, schedule: Schedule) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=schedule.zone).astimezone(UTC)


def _dry_run(services: Services, spec: BackfillSpec, schedule: Schedule) -> BackfillDryRun:
    with services.sessions() as session:
        page = plan_page(
            Cron.of(schedule),
            spec,
            backfill_id(spec),
            None,
            DRY_RUN_LIMIT,
            lambda ids: run_statuses(session, ids),
            count_total=True,
        )
    return BackfillDryRun(
        pipeline=spec.pipeline,
        total=page.total or 0,
        logical_dates=[item.logical_date for item in page.items],
        skipped=len(page.skipped),
    )


@router.post(
    "/v1/pipelines/{name}/backfills",
    status_code=201,
    response_model=BackfillProgress | BackfillDryRun,
)
async def create_backfill(
    name: str,
    body: BackfillCreate,
    principal: OperatorDep,
    services: ServicesDep,
    response: Response,
) -> Any:
    """Start a backfill (201), or return the same one started before (200); `dry_run` lists the
    logical dates it would run (200)."""
    spec, schedule = await anyio.to_thread.run_sync(_spec, services, principal, name, body)
    if body.dry_run:
        response.status_code = 200
        return await anyio.to_thread.run_sync(_dry_run, services, spec, schedule)
    temporal = await _temporal(services)
    try:
        identifier, created = await start_backfill(
            temporal, spec, task_queue=services.settings.task_queue
        )
        progress = await backfill_progress(temporal, spec.tenant, identifier)
    except RPCError as exc:
        raise ProblemError(503, f"Temporal refused the backfill: {exc.message}") from None
    if not created:
        response.status_code = 200
    return progress


@router.get("/v1/backfills/{backfill_id}", response_model=BackfillProgress)
async def get_backfill(
    backfill_id: str, principal: ReaderDep, services: ServicesDep
) -> BackfillProgress:
    """Progress: counts per outcome, runs in flight (and the most seen at once), state."""
    temporal = await _temporal(services)
    try:
        progress = await backfill_progress(temporal, tenant_of(principal).name, backfill_id)
    except RPCError as exc:
        raise ProblemError(503, f"Temporal refused the query: {exc.message}") from None
    if progress is None:
        raise not_found(f"backfill '{backfill_id}'")
    return progress


async def _signal(
    backfill_id: str, action: str, principal: Principal, services: Services
) -> BackfillProgress:
    temporal = await _temporal(services)
    tenant = tenant_of(principal).name
    try:
        if not await signal_backfill(temporal, tenant, backfill_id, action):
            raise not_found(f"backfill '{backfill_id}'")
        progress = await backfill_progress(temporal, tenant, backfill_id)
    except RPCError as exc:
        raise ProblemError(
            409 if "completed" in exc.message else 503, f"backfill '{backfill_id}': {exc.message}"
        ) from None
    assert progress is not None
    return progress


@router.post("/v1/backfills/{backfill_id}/pause", status_code=202, response_model=BackfillProgress)
async def pause_backfill(
    backfill_id: str, principal: OperatorDep, services: ServicesDep
) -> BackfillProgress:
    """No new runs start; runs in flight finish."""
    return await _signal(backfill_id, "pause", principal, services)


@router.post("/v1/backfills/{backfill_id}/resume", status_code=202, response_model=BackfillProgress)
async def resume_backfill(
    backfill_id: str, principal: OperatorDep, services: ServicesDep
) -> BackfillProgress:
    return await _signal(backfill_id, "resume", principal, services)


@router.post("/v1/backfills/{backfill_id}/cancel", status_code=202, response_model=BackfillProgress)
async def cancel_backfill(
    backfill_id: str, principal: OperatorDep, services: ServicesDep
) -> BackfillProgress:
    """No new runs start, and the runs in flight are cancelled."""
    return await _signal(backfill_id, "cancel", principal, services)
