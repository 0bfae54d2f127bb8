"""The dependency gate's activities (check the upstream runs, start or fail the downstream
run), and what opens gates: an upstream run that succeeded, a downstream's own fire."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from activities.names import CHECK_DEPENDENCIES, FAIL_DEPENDENT, LAUNCH_DEPENDENT
from pipeline_service.db.models import Pipeline, Run, Tenant
from pipeline_service.db.outbox import add_event
from pipeline_service.db.pipelines import current_definitions, get_pipeline, get_version
from pipeline_service.db.runs import NewRun, insert_run
from pipeline_service.db.session import transaction
from pipeline_service.db.tenants import get_tenant
from pipeline_service.launcher import (
    LaunchRequest,
    Priority,
    StartPath,
    run_payload,
    workflow_id_for,
)
from pipeline_service.scheduling.dependencies import downstream_interval, upstream_dates
from schemas.events import EventType
from schemas.pipeline import Dependency
from schemas.recording import PipelineStatus, RecordedRunStatus, RecordRunEventsInput
from schemas.run import Trigger
from schemas.scheduling import (
    GateCheck,
    GateCheckInput,
    GateFailInput,
    GateInput,
    GateOutcome,
    UpstreamSignal,
)
from workflows.dependency_gate import DependencyGateWorkflow, gate_workflow_id

log = logging.getLogger(__name__)
DEPENDENCY_ACTOR = "dependency"


def current_definition(session: Session, tenant_id: int, name: str) -> dict[str, Any] | None:
    pipeline = get_pipeline(session, tenant_id, name)
    if pipeline is None or pipeline.status == PipelineStatus.ARCHIVED.value:
        return None
    version = get_version(session, pipeline, pipeline.current_version)
    return version.definition if version else None


def succeeded_dates(
    session: Session, tenant_id: int, pipeline: str, dates: list[datetime]
) -> set[datetime]:
    """Those of `dates` for which some run of the pipeline (a retry or rerun too) succeeded."""
    rows = session.scalars(
        select(Run.logical_date)
        .join(Pipeline, Pipeline.id == Run.pipeline_id)
        .where(
            Run.tenant_id == tenant_id,
            Pipeline.name == pipeline,
            Run.status == RecordedRunStatus.SUCCEEDED.value,
            Run.logical_date.in_(dates),
        )
    ).all()
    return {row.astimezone(UTC) for row in rows}


async def open_gate(
    client: Client, gate: GateInput, *, task_queue: str, signal: UpstreamSignal
) -> str:
    """Signal-with-start the gate of the downstream's run for the date: one per date."""
    logical_date = gate.logical_date.astimezone(UTC).isoformat()
    workflow_id = gate_workflow_id(gate.tenant, gate.pipeline, logical_date)
    await client.start_workflow(
        DependencyGateWorkflow.run,
        gate,
        id=workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="upstream_succeeded",
        start_signal_args=[signal],
    )
    return workflow_id


class DependencyActivities(StartPath):
    @activity.defn(name=CHECK_DEPENDENCIES)
    async def check_dependencies(self, request: GateCheckInput) -> GateCheck:
        return await anyio.to_thread.run_sync(self._check, request)

    def _check(self, request: GateCheckInput) -> GateCheck:
        gate, now = request.gate, max(request.now, datetime.now(UTC))
        start, end = gate.logical_date.astimezone(UTC), gate.interval_end.astimezone(UTC)
        with self.sessions() as session:
            tenant = get_tenant(session, gate.tenant)
            definition = current_definition(session, tenant.id, gate.pipeline) if tenant else None
            if tenant is None or definition is None:
                return GateCheck(gone=f"pipeline '{gate.pipeline}' not found")
            dependencies = [Dependency.model_validate(d) for d in definition.get("depends_on", [])]
            if not dependencies:
                return GateCheck(gone=f"pipeline '{gate.pipeline}' has no dependencies")
            # A wait timeout counts from when the run was due (its interval's end).
            due = max(end, request.waiting_since)
            missing, expired, deadlines = [], [], []
            for dependency in dependencies:
                upstream = current_definition(session, tenant.id, dependency.pipeline) or {}
                dates = [d.astimezone(UTC) for d in upstream_dates(upstream, start, end)]
                done = succeeded_dates(session, tenant.id, dependency.pipeline, dates)
                absent = [f"{dependency.pipeline}@{d.isoformat()}" for d in dates if d not in done]
                if absent:
                    missing += absent
                    deadline = due + dependency.timeout
                    deadlines.append(deadline)
                    if now >= deadline:
                        expired += absent
        if not missing and now >= end:
            return GateCheck(ready=True)
        if not missing:
            deadlines.append(end)
        return GateCheck(missing=missing, expired=expired, next_check=min(deadlines))

    @activity.defn(name=LAUNCH_DEPENDENT)
    async def launch_dependent(self, gate: GateInput) -> GateOutcome:
        tenant = await self.find_tenant(gate.tenant)
        if tenant is None:
            return GateOutcome(detail=f"tenant '{gate.tenant}' not found")
        request = LaunchRequest(
            tenant=tenant,
            pipeline=gate.pipeline,
            actor=DEPENDENCY_ACTOR if gate.trigger == "dependency" else gate.trigger,
            logical_date=gate.logical_date,
            trigger=Trigger(gate.trigger),
            data_interval_end=gate.interval_end,
            priority=Priority.BACKFILL if gate.trigger == "backfill" else Priority.SCHEDULED,
        )
        launch = await self.launch(request)
        if isinstance(launch, str):
            return GateOutcome(detail=launch)
        return GateOutcome(workflow_id=launch.run.workflow_id)

    @activity.defn(name=FAIL_DEPENDENT)
    async def fail_dependent(self, request: GateFailInput) -> None:
        await anyio.to_thread.run_sync(self._fail, request)

    def _fail(self, request: GateFailInput) -> None:
        """Record the downstream's run for the date as FAILED with the reason (unless a run
        for the date exists: then it has started after all)."""
        gate = request.gate
        with transaction(self.sessions) as session:
            tenant = get_tenant(session, gate.tenant)
            pipeline = get_pipeline(session, tenant.id, gate.pipeline) if tenant else None
            if tenant is None or pipeline is None:
                return
            version = get_version(session, pipeline, pipeline.current_version)
            assert version is not None
            now = datetime.now(UTC)
            run, created = insert_run(
                session,
                NewRun(
                    tenant_id=tenant.id,
                    pipeline_id=pipeline.id,
                    version_id=version.id,
                    workflow_id=workflow_id_for(
                        tenant.name, pipeline.name, gate.logical_date, None
                    ),
                    status=RecordedRunStatus.FAILED.value,
                    trigger=gate.trigger,
                    actor=DEPENDENCY_ACTOR,
                    logical_date=gate.logical_date,
                    params={},
                ),
            )
            if not created:
                return
            run.error, run.finished_at = request.reason, now
            add_event(
                session,
                tenant_id=tenant.id,
                key=run.public_id,
                type=EventType.PIPELINE_FAILED,
                actor=DEPENDENCY_ACTOR,
                payload={**run_payload(tenant, pipeline, version, run), "error": request.reason},
            )


class DownstreamNotifier:
    """After an upstream run succeeded: open (or signal) the gate of every downstream run whose
    interval holds its logical date. Called once per successful run, off the run's path."""

    def __init__(self, sessions: sessionmaker[Session], client: Client, *, task_queue: str) -> None:
        self.sessions, self.client, self.task_queue = sessions, client, task_queue
        self._dependants: dict[int, tuple[list[Any], dict[str, list[tuple[str, Any]]]]] = {}
        """Per tenant: the stamp its pipelines had, and who depends on whom then."""

    async def __call__(self, batch: RecordRunEventsInput) -> None:
        if not any(
            e.run is not None and e.run.status == RecordedRunStatus.SUCCEEDED for e in batch.events
        ):
            return
        try:
            gates = await anyio.to_thread.run_sync(self._gates, batch.workflow_id)
            for gate, signal in gates:
                await open_gate(self.client, gate, task_queue=self.task_queue, signal=signal)
        except Exception:  # the gate's own re-check picks it up later
            log.exception("could not notify the downstreams of %s", batch.workflow_id)

    def _gates(self, workflow_id: str) -> list[tuple[GateInput, UpstreamSignal]]:
        # Committed though read-only (see `transaction`): it runs after every successful run.
        with transaction(self.sessions) as session:
            found = session.execute(_RUN_AND_STAMP, {"workflow_id": workflow_id}).one_or_none()
            if found is None:
                return []
            tenant_id, tenant, upstream, logical_date, *stamp = found
            dependants = self._dependants.get(tenant_id)
            if dependants is None or dependants[0] != stamp:
                dependants = (stamp, _dependants(current_definitions(session, tenant_id)))
                self._dependants[tenant_id] = dependants
        logical_date = logical_date.astimezone(UTC)
        signal = UpstreamSignal(pipeline=upstream, logical_date=logical_date)
        gates = []
        for name, definition in dependants[1].get(upstream, []):
            interval = downstream_interval(definition, logical_date)
            gate = GateInput(
                tenant=tenant,
                pipeline=name,
                logical_date=interval.start,
                interval_end=interval.end,
            )
            gates.append((gate, signal))
        return gates


def _dependants(
    rows: list[tuple[str, dict[str, Any]]],
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Upstream pipeline -> the (name, definition) of each pipeline that depends on it."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, definition in rows:
        for upstream in {d.get("pipeline") for d in definition.get("depends_on") or []}:
            if isinstance(upstream, str):
                found.setdefault(upstream, []).append((name, definition))
    return found


_TENANT_PIPELINES = aliased(Pipeline, name="stamped")


def _over_tenant(aggregate: Any) -> Any:
    """`aggregate` over the pipelines of the run's tenant."""
    return select(aggregate).where(_TENANT_PIPELINES.tenant_id == Run.tenant_id).scalar_subquery()


_RUN_AND_STAMP = (
    select(
        Run.tenant_id,
        Tenant.name,
        Pipeline.name,
        Run.logical_date,
        # What the tenant's current definitions depend on: a new version raises the sum of
        # current versions; archiving or restoring a pipeline moves its updated_at.
        *map(
            _over_tenant,
            [
                func.count(_TENANT_PIPELINES.id),
                func.sum(_TENANT_PIPELINES.current_version),
                func.max(_TENANT_PIPELINES.updated_at),
            ],
        ),
    )
    .join(Pipeline, Pipeline.id == Run.pipeline_id)
    .join(Tenant, Tenant.id == Run.tenant_id)
    .where(Run.workflow_id == bindparam("workflow_id"))
)
"""A run's tenant and upstream names and logical date, with a stamp of its tenant's
pipelines: the notifier reads the tenant's definitions again only when the stamp moves."""
