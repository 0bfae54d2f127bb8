"""The scheduler's activities: plan a pipeline's schedule, and start one interval's run through
the launcher (the only start path) with the schedule's overlap policy applied."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from temporalio import activity

from activities.dependencies import current_definition, open_gate
from activities.names import LAUNCH_SCHEDULED, PLAN_SCHEDULE
from pipeline_service.db.models import Pipeline, Run, Tenant
from pipeline_service.db.pipelines import get_pipeline, get_version
from pipeline_service.db.tenants import get_tenant
from pipeline_service.launcher import LaunchRequest, Priority, StartPath, workflow_id_for
from pipeline_service.scheduling.planning import plan
from schemas.pipeline import Schedule
from schemas.recording import RUN_FINISHED, PipelineStatus
from schemas.run import Trigger
from schemas.scheduling import (
    GateInput,
    LaunchOutcome,
    LaunchScheduledInput,
    LaunchScheduledResult,
    PlanScheduleInput,
    SchedulePlan,
    UpstreamSignal,
)

log = logging.getLogger(__name__)
SCHEDULE_ACTOR = "schedule"


class ScheduleActivities(StartPath):
    @activity.defn(name=PLAN_SCHEDULE)
    async def plan_schedule(self, request: PlanScheduleInput) -> SchedulePlan:
        found = await anyio.to_thread.run_sync(self._schedule, request.tenant, request.pipeline)
        if isinstance(found, str):
            return SchedulePlan(active=False, reason=found)
        if request.wait_until is not None:
            delay = (request.wait_until - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(min(max(delay, 0), 5))
        now = max(datetime.now(UTC), request.now, request.wait_until or request.now)
        return plan(found, f"{request.tenant}/{request.pipeline}", request.cursor, now)

    def _schedule(self, tenant_name: str, name: str) -> Schedule | str:
        with self.sessions() as session:
            return current_schedule(session, tenant_name, name)

    @activity.defn(name=LAUNCH_SCHEDULED)
    async def launch_scheduled(self, request: LaunchScheduledInput) -> LaunchScheduledResult:
        tenant, active = await anyio.to_thread.run_sync(self._running, request)
        if tenant is None:
            return LaunchScheduledResult(
                outcome=LaunchOutcome.REFUSED, detail=f"tenant '{request.tenant}' not found"
            )
        if active:
            if request.overlap == "skip":
                return LaunchScheduledResult(
                    outcome=LaunchOutcome.SKIPPED, detail=f"{active[0]} is still running"
                )
            if request.overlap in ("buffer_one", "buffer_all"):
                return LaunchScheduledResult(
                    outcome=LaunchOutcome.BUSY, detail=f"{active[0]} is still running"
                )
            if request.overlap == "cancel_other":
                for workflow_id in active:
                    await self.cancel(workflow_id)
        fire = request.fire
        if await anyio.to_thread.run_sync(self._has_dependencies, tenant, request.pipeline):
            # The run waits for its upstream runs in the date's gate, which starts it.
            gate = GateInput(
                tenant=tenant.name,
                pipeline=request.pipeline,
                logical_date=fire.logical_date,
                interval_end=fire.interval_end,
                trigger=Trigger.SCHEDULE.value,
            )
            signal = UpstreamSignal(pipeline=request.pipeline, logical_date=fire.logical_date)
            gate_id = await open_gate(self.client, gate, task_queue=self.task_queue, signal=signal)
            return LaunchScheduledResult(outcome=LaunchOutcome.STARTED, workflow_id=gate_id)
        launch_request = LaunchRequest(
            tenant=tenant,
            pipeline=request.pipeline,
            actor=SCHEDULE_ACTOR,
            logical_date=fire.logical_date,
            trigger=Trigger.SCHEDULE,
            data_interval_end=fire.interval_end,
            priority=Priority.SCHEDULED,
        )
        launch = await self.launch(launch_request)
        if isinstance(launch, str):
            return LaunchScheduledResult(outcome=LaunchOutcome.REFUSED, detail=launch)
        return LaunchScheduledResult(
            outcome=LaunchOutcome.STARTED if launch.created else LaunchOutcome.EXISTING,
            workflow_id=launch.run.workflow_id,
        )

    def _has_dependencies(self, tenant: Tenant, pipeline: str) -> bool:
        with self.sessions() as session:
            definition = current_definition(session, tenant.id, pipeline)
            return bool(definition and definition.get("depends_on"))

    def _running(self, request: LaunchScheduledInput) -> tuple[Tenant | None, list[str]]:
        """The tenant, and the workflow ids of this pipeline's unfinished scheduled runs other
        than the one for this fire."""
        with self.sessions() as session:
            tenant = get_tenant(session, request.tenant)
            if tenant is None:
                return None, []
            own = workflow_id_for(tenant.name, request.pipeline, request.fire.logical_date, None)
            rows = session.scalars(
                select(Run.workflow_id)
                .join(Pipeline, Pipeline.id == Run.pipeline_id)
                .where(
                    Run.tenant_id == tenant.id,
                    Pipeline.name == request.pipeline,
                    Run.trigger == Trigger.SCHEDULE.value,
                    Run.status.not_in([s.value for s in RUN_FINISHED]),
                    Run.workflow_id != own,
                )
                .order_by(Run.logical_date)
            ).all()
            session.expunge(tenant)
            return tenant, list(rows)


def current_schedule(session: Session, tenant_name: str, name: str) -> Schedule | str:
    """The pipeline's current schedule, or why it has none."""
    tenant = get_tenant(session, tenant_name)
    pipeline = get_pipeline(session, tenant.id, name) if tenant else None
    if pipeline is None:
        return f"pipeline '{name}' not found"
    if pipeline.status == PipelineStatus.ARCHIVED.value:
        return f"pipeline '{name}' is archived"
    version = get_version(session, pipeline, pipeline.current_version)
    raw = version.definition.get("schedule") if version else None
    if not raw:
        return f"pipeline '{name}' has no schedule"
    try:
        return Schedule.model_validate(raw)
    except ValidationError as exc:  # stored definitions were validated; be safe
        return f"pipeline '{name}' has an invalid schedule: {exc.errors()[0]['msg']}"
