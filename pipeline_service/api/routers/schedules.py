"""/v1/pipelines/{name}/schedule: the next fire times in the pipeline's zone and the
scheduler's state; pause and unpause."""

from __future__ import annotations

from typing import Annotated

import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Query
from temporalio.client import Client
from temporalio.service import RPCError

from pipeline_service.api.deps import OperatorDep, Principal, ReaderDep, ServicesDep, tenant_of
from pipeline_service.api.models import ScheduleFirePublic, SchedulePublic
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.api.services import Services
from pipeline_service.db.pipelines import get_pipeline, get_version
from pipeline_service.scheduling.sync import (
    preview,
    refresh_if_running,
    scheduler_state,
    set_paused,
    sync_schedule,
)
from schemas.pipeline import Schedule
from schemas.recording import PipelineStatus

router = APIRouter(prefix="/v1/pipelines", tags=["schedules"])


def _schedule(services: Services, principal: Principal, name: str) -> Schedule:
    with services.sessions() as session:
        pipeline = get_pipeline(session, tenant_of(principal).id, name)
        if pipeline is None:
            raise not_found(f"pipeline '{name}'")
        version = get_version(session, pipeline, pipeline.current_version)
        raw = version.definition.get("schedule") if version else None
        if not raw:
            raise ProblemError(404, f"pipeline '{name}' has no schedule")
        if pipeline.status == PipelineStatus.ARCHIVED.value:
            raise ProblemError(409, f"pipeline '{name}' is archived")
        return Schedule.model_validate(raw)


async def _temporal(services: Services) -> Client:
    try:
        return await services.temporal_client()
    except Exception as exc:
        raise ProblemError(
            503, f"Temporal is not reachable at {services.settings.temporal_address}: {exc}"
        ) from None


async def _answer(
    services: Services, principal: Principal, name: str, count: int
) -> SchedulePublic:
    schedule = await anyio.to_thread.run_sync(_schedule, services, principal, name)
    temporal = await _temporal(services)
    try:
        state = await scheduler_state(temporal, tenant_of(principal).name, name)
    except RPCError as exc:
        raise ProblemError(503, f"Temporal refused the query: {exc.message}") from None
    return SchedulePublic(
        pipeline=name,
        cron=schedule.cron,
        timezone=schedule.timezone,
        catchup=schedule.catchup,
        overlap=schedule.overlap.value,
        jitter_seconds=schedule.jitter.total_seconds(),
        start_date=schedule.start,
        end_date=schedule.end,
        paused=state.paused if state else schedule.paused,
        running=state is not None,
        next_fires=preview(schedule, count),
        last_handled=state.cursor if state else None,
        buffered=[
            ScheduleFirePublic(logical_date=f.logical_date, fires_at=f.interval_end)
            for f in (state.buffered if state else [])
        ],
        recent=state.last_outcomes if state else [],
    )


@router.get("/{name}/schedule", response_model=SchedulePublic)
async def get_schedule(
    name: str,
    principal: ReaderDep,
    services: ServicesDep,
    count: Annotated[int, Query(ge=1, le=100)] = 10,
) -> SchedulePublic:
    """The next `count` fire times in the pipeline's time zone, and the scheduler's state."""
    return await _answer(services, principal, name, count)


async def _pause(services: Services, principal: Principal, name: str, paused: bool) -> None:
    await anyio.to_thread.run_sync(_schedule, services, principal, name)
    temporal = await _temporal(services)
    try:
        await set_paused(
            temporal,
            tenant_of(principal).name,
            name,
            paused,
            task_queue=services.settings.task_queue,
        )
    except RPCError as exc:
        raise ProblemError(503, f"Temporal refused the signal: {exc.message}") from None


@router.post("/{name}/schedule/pause", response_model=SchedulePublic)
async def pause_schedule(
    name: str, principal: OperatorDep, services: ServicesDep
) -> SchedulePublic:
    """Stop firing (runs in flight continue); with catchup, unpausing runs what was missed."""
    await _pause(services, principal, name, True)
    return await _answer(services, principal, name, 10)


@router.post("/{name}/schedule/unpause", response_model=SchedulePublic)
async def unpause_schedule(
    name: str, principal: OperatorDep, services: ServicesDep
) -> SchedulePublic:
    await _pause(services, principal, name, False)
    return await _answer(services, principal, name, 10)


def sync_after_change(services: Services, tenant: str, name: str, has_schedule: bool) -> None:
    """From a sync endpoint's thread, after a definition changed: start or refresh the
    pipeline's scheduler; without a schedule, only tell a running one (it then ends)."""

    async def sync() -> None:
        temporal = await _temporal(services)
        try:
            if has_schedule:
                await sync_schedule(temporal, tenant, name, task_queue=services.settings.task_queue)
            else:
                await refresh_if_running(temporal, tenant, name)
        except RPCError as exc:
            raise ProblemError(
                503,
                f"the definition was saved but its schedule could not be updated "
                f"({exc.message}); send the request again",
            ) from None

    anyio.from_thread.run(sync)
