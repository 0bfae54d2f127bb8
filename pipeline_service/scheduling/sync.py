"""The service's side of a pipeline's scheduler workflow: start it (or tell it the schedule
changed), pause/unpause it, read its state, and preview the next fire times."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from pipeline_service.launcher import PIPELINE_KEY, TENANT_KEY
from pipeline_service.scheduling.fire_times import Cron
from schemas.pipeline import Schedule
from schemas.scheduling import PauseSignal, RefreshSignal, SchedulerInput, SchedulerState
from workflows.schedule import PipelineScheduleWorkflow, scheduler_workflow_id


async def sync_schedule(client: Client, tenant: str, pipeline: str, *, task_queue: str) -> None:
    """Make sure the pipeline's scheduler runs and re-reads its schedule (signal-with-start:
    one scheduler per pipeline however often this is called). A scheduler whose pipeline lost
    its schedule ends by itself."""
    await client.start_workflow(
        PipelineScheduleWorkflow.run,
        SchedulerInput(tenant=tenant, pipeline=pipeline),
        id=scheduler_workflow_id(tenant, pipeline),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="refresh",
        start_signal_args=[RefreshSignal()],
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(TENANT_KEY, tenant), SearchAttributePair(PIPELINE_KEY, pipeline)]
        ),
        memo={"tenant": tenant, "pipeline": pipeline},
    )


async def set_paused(
    client: Client, tenant: str, pipeline: str, paused: bool, *, task_queue: str
) -> None:
    await sync_schedule(client, tenant, pipeline, task_queue=task_queue)
    handle = client.get_workflow_handle(scheduler_workflow_id(tenant, pipeline))
    await handle.signal(PipelineScheduleWorkflow.pause, PauseSignal(paused=paused))


async def refresh_if_running(client: Client, tenant: str, pipeline: str) -> None:
    handle = client.get_workflow_handle(scheduler_workflow_id(tenant, pipeline))
    try:
        await handle.signal(PipelineScheduleWorkflow.refresh, RefreshSignal())
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


async def scheduler_state(client: Client, tenant: str, pipeline: str) -> SchedulerState | None:
    """The running scheduler's state, or None when it is not running."""
    handle = client.get_workflow_handle(scheduler_workflow_id(tenant, pipeline))
    try:
        return await handle.query(PipelineScheduleWorkflow.state)
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            return None
        raise


def preview(schedule: Schedule, count: int, after: datetime | None = None) -> list[datetime]:
    """The next `count` fire times after `after` (default now) in the schedule's zone, within
    its end_date."""
    fires = Cron.of(schedule).next_fires(after or datetime.now(UTC), count + 1)
    end, start = schedule.end, schedule.start
    # A fire closes the interval before it: it counts if that interval starts in range.
    kept = []
    for previous, fire in zip([None, *fires], fires, strict=False):
        begin = previous or Cron.of(schedule).previous_fire(fire)
        if end is not None and begin >= end:
            break
        if start is not None and begin < start:
            continue
        kept.append(fire.astimezone(schedule.zone))
    return kept[:count]
