"""The backfill's activities: plan a page of intervals (applying `reprocess`), start one run
through the launcher, wait for runs to finish, cancel runs, record BACKFILL events."""

from __future__ import annotations

import asyncio
import time

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.names import (
    CANCEL_RUNS,
    LAUNCH_BACKFILL_RUN,
    PLAN_BACKFILL_PAGE,
    RECORD_BACKFILL_EVENT,
    WAIT_RUNS,
)
from activities.scheduling import current_schedule
from pipeline_service.db.models import Run, Tenant
from pipeline_service.db.outbox import add_event
from pipeline_service.db.runs import get_run_by_workflow_id
from pipeline_service.db.session import transaction
from pipeline_service.db.tenants import get_tenant
from pipeline_service.launcher import LaunchRequest, Priority, StartPath
from pipeline_service.scheduling.backfill_plan import plan_page
from pipeline_service.scheduling.fire_times import Cron
from schemas.events import EventType
from schemas.recording import RUN_FINISHED
from schemas.run import Trigger
from schemas.scheduling import (
    BackfillEventInput,
    BackfillLaunchInput,
    BackfillLaunchResult,
    BackfillPage,
    BackfillPageInput,
    RunsCancelInput,
    RunsWaitInput,
    RunsWaitResult,
)

BACKFILL_ACTOR = "backfill"
_FINISHED = {s.value for s in RUN_FINISHED}
_POLL = 0.1


def run_statuses(session: Session, workflow_ids: list[str]) -> dict[str, str]:
    rows = session.execute(
        select(Run.workflow_id, Run.status).where(Run.workflow_id.in_(workflow_ids))
    ).all()
    return {workflow_id: status for workflow_id, status in rows}


class BackfillActivities(StartPath):
    @activity.defn(name=PLAN_BACKFILL_PAGE)
    async def plan_backfill_page(self, request: BackfillPageInput) -> BackfillPage:
        return await anyio.to_thread.run_sync(self._plan, request)

    def _plan(self, request: BackfillPageInput) -> BackfillPage:
        spec = request.spec
        with self.sessions() as session:
            schedule = current_schedule(session, spec.tenant, spec.pipeline)
            if isinstance(schedule, str):
                raise ApplicationError(schedule, non_retryable=True)

            def statuses(ids: list[str]) -> dict[str, str]:
                return run_statuses(session, ids)

            return plan_page(
                Cron.of(schedule),
                spec,
                request.backfill_id,
                request.cursor,
                request.limit,
                statuses,
                count_total=request.count_total,
            )

    @activity.defn(name=LAUNCH_BACKFILL_RUN)
    async def launch_backfill_run(self, request: BackfillLaunchInput) -> BackfillLaunchResult:
        spec, item = request.spec, request.item

        def look_up() -> tuple[Tenant | None, int | None]:
            with self.sessions() as session:
                tenant = get_tenant(session, spec.tenant)
                earlier = get_run_by_workflow_id(session, item.rerun_of) if item.rerun_of else None
                return tenant, earlier.id if earlier else None

        tenant, retry_of = await anyio.to_thread.run_sync(look_up)
        if tenant is None:
            raise ApplicationError(f"tenant '{spec.tenant}' not found", non_retryable=True)
        launch_request = LaunchRequest(
            tenant=tenant,
            pipeline=spec.pipeline,
            actor=BACKFILL_ACTOR,
            params=spec.params,
            logical_date=item.logical_date,
            trigger=Trigger.BACKFILL,
            retry_of_id=retry_of,
            workflow_id=item.workflow_id if item.rerun_of else None,
            data_interval_end=item.interval_end,
            priority=Priority.BACKFILL,
        )
        launch = await self.launch(launch_request)
        if isinstance(launch, str):
            return BackfillLaunchResult(workflow_id=item.workflow_id, status="", refused=launch)
        return BackfillLaunchResult(workflow_id=launch.run.workflow_id, status=launch.run.status)

    @activity.defn(name=WAIT_RUNS)
    async def wait_runs(self, request: RunsWaitInput) -> RunsWaitResult:
        """Returns as soon as one of the runs has finished (or after the timeout)."""
        deadline = time.monotonic() + request.timeout_seconds
        while True:
            statuses = await anyio.to_thread.run_sync(self._statuses, request.workflow_ids)
            finished = {w: s for w, s in statuses.items() if s in _FINISHED}
            if finished or time.monotonic() >= deadline:
                return RunsWaitResult(finished=finished)
            await asyncio.sleep(_POLL)

    def _statuses(self, workflow_ids: list[str]) -> dict[str, str]:
        with self.sessions() as session:
            return run_statuses(session, workflow_ids)

    @activity.defn(name=CANCEL_RUNS)
    async def cancel_runs(self, request: RunsCancelInput) -> None:
        for workflow_id in request.workflow_ids:
            await self.cancel(workflow_id)

    @activity.defn(name=RECORD_BACKFILL_EVENT)
    async def record_backfill_event(self, request: BackfillEventInput) -> None:
        await anyio.to_thread.run_sync(self._record_event, request)

    def _record_event(self, request: BackfillEventInput) -> None:
        try:
            with transaction(self.sessions) as session:
                tenant = get_tenant(session, request.tenant)
                if tenant is None:
                    return
                add_event(
                    session,
                    tenant_id=tenant.id,
                    key=request.backfill_id,
                    type=EventType(request.type),
                    actor=BACKFILL_ACTOR,
                    payload={
                        "tenant": request.tenant,
                        "pipeline": request.pipeline,
                        "status": request.status,
                        "reason": f"backfill {request.backfill_id}: {request.reason}",
                    },
                    event_id=request.event_id,
                )
        except IntegrityError:
            pass  # recorded by an earlier attempt (the event id is unique)
