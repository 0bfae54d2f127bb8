"""The one way a run starts. Every start path (the API's trigger, later schedules, pipeline
dependencies, Kafka triggers, backfills) calls `launch_run`, which fixes the logical date,
derives the workflow id, records the run (unique workflow id: one run per date or key) and
submits it to Temporal. Quotas hook in here (see the multi-tenant issue)."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from pipeline_service.db.models import Run, Tenant
from pipeline_service.db.outbox import add_event
from pipeline_service.db.pipelines import get_pipeline, get_version
from pipeline_service.db.runs import NewRun, insert_run
from pipeline_service.db.session import transaction
from schemas.events import EventType
from schemas.loading import resolve_params, validate_pipeline
from schemas.recording import PipelineStatus, RecordedRunStatus
from schemas.run import RunContext, RunInput, StepResult, Trigger
from workflows.pipeline_run import PipelineRunWorkflow

TENANT_KEY = SearchAttributeKey.for_keyword("LaminarTenant")
PIPELINE_KEY = SearchAttributeKey.for_keyword("LaminarPipeline")


class LaunchRefused(Exception):
    """The run cannot start (paused or archived pipeline, key reused with other params)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class LaunchRequest:
    tenant: Tenant
    pipeline: str
    actor: str
    params: dict[str, Any] = field(default_factory=dict)
    """Overrides, resolved against the pipeline's declared params (PipelineValidationError)."""
    logical_date: datetime | None = None
    idempotency_key: str | None = None
    trigger: Trigger = Trigger.MANUAL
    retry_of_id: int | None = None
    version: int | None = None
    """The version to run (a retry runs its original's); default: the current one."""
    reuse: dict[str, StepResult] = field(default_factory=dict)
    """Steps done by an earlier run, not run again (retry from failure)."""
    workflow_id: str | None = None
    """Fixed by the caller (a retry names its own); default: derived from date or key."""
    max_parallelism: int | None = None
    """Overrides the definition's (`laminar run --parallelism`)."""
    data_interval_end: datetime | None = None
    """The end of the run's data interval (schedules, backfills); default: its logical date."""


@dataclass(frozen=True)
class Launch:
    run: Run
    created: bool
    """False: the request named a run that exists already (same date or idempotency key)."""


def workflow_id_for(
    tenant: str, pipeline: str, logical_date: datetime | None, key: str | None
) -> str:
    """Dated runs are one per logical date; manual runs one per idempotency key (if given)."""
    if logical_date is not None:
        return f"{tenant}/{pipeline}/{logical_date.astimezone(UTC).isoformat()}"
    if key is not None:
        return f"{tenant}/{pipeline}/key:{key}"
    return f"{tenant}/{pipeline}/manual__{datetime.now(UTC).isoformat()}__{uuid.uuid4().hex[:8]}"


def _record(
    sessions: sessionmaker[Session], request: LaunchRequest, source_dir: Path
) -> tuple[Launch, RunInput]:
    with transaction(sessions) as session:
        pipeline = get_pipeline(session, request.tenant.id, request.pipeline)
        if pipeline is None:
            raise LaunchRefused(404, f"pipeline '{request.pipeline}' not found")
        if pipeline.status in (PipelineStatus.PAUSED.value, PipelineStatus.ARCHIVED.value):
            raise LaunchRefused(
                409, f"pipeline '{pipeline.name}' is {pipeline.status.lower()}; runs cannot start"
            )
        version = get_version(session, pipeline, request.version or pipeline.current_version)
        if version is None:
            raise LaunchRefused(404, f"version {request.version} of '{pipeline.name}' not found")
        definition = validate_pipeline(version.definition, source_dir=source_dir)
        params = resolve_params(definition, request.params)
        logical_date = request.logical_date
        workflow_id = request.workflow_id or workflow_id_for(
            request.tenant.name, pipeline.name, logical_date, request.idempotency_key
        )
        run, created = insert_run(
            session,
            NewRun(
                tenant_id=request.tenant.id,
                pipeline_id=pipeline.id,
                version_id=version.id,
                workflow_id=workflow_id,
                status=RecordedRunStatus.QUEUED.value,
                trigger=request.trigger.value,
                actor=request.actor,
                logical_date=logical_date or datetime.now(UTC),
                params=params,
                idempotency_key=request.idempotency_key,
                retry_of_id=request.retry_of_id,
            ),
        )
        if not created and request.idempotency_key and run.params != params:
            raise LaunchRefused(
                409,
                f"Idempotency-Key {request.idempotency_key!r} was used for run {run.public_id} "
                "with other parameters; use a new key for a different run",
            )
        if created:
            add_event(
                session,
                tenant_id=request.tenant.id,
                key=run.public_id,
                type=EventType.PIPELINE_QUEUED,
                actor=request.actor,
                payload={
                    "tenant": request.tenant.name,
                    "pipeline": pipeline.name,
                    "version": version.version,
                    "run_id": run.public_id,
                    "workflow_id": run.workflow_id,
                    "logical_date": run.logical_date.isoformat(),
                    "status": run.status,
                    "trigger": run.trigger,
                },
            )
        context = RunContext(
            tenant=request.tenant.name,
            pipeline=pipeline.name,
            run_id=workflow_id,
            trigger=Trigger(run.trigger),
            logical_date=run.logical_date,
            data_interval_start=run.logical_date,
            data_interval_end=request.data_interval_end or run.logical_date,
            params=run.params,
        )
    return Launch(run, created), RunInput(
        pipeline=definition,
        context=context,
        source_dir=str(source_dir),
        reuse=request.reuse,
        max_parallelism=request.max_parallelism,
        record=True,
    )


async def launch_run(
    sessions: sessionmaker[Session],
    temporal: Client,
    request: LaunchRequest,
    *,
    task_queue: str,
    source_dir: Path,
    eager: bool = False,
) -> Launch:
    """Record the run (or find the one it names) and make sure its workflow is started.
    `eager`: a worker runs in this process; the server may hand it the first task at once."""
    launch, run_input = await anyio.to_thread.run_sync(_record, sessions, request, source_dir)
    await start_workflow(temporal, launch.run, run_input, task_queue=task_queue, eager=eager)
    return launch


async def start_workflow(
    temporal: Client, run: Run, run_input: RunInput, *, task_queue: str, eager: bool = False
) -> None:
    """Start the run's workflow; a second start of the same run is a no-op (also after it
    finished: the id is never reused)."""
    if run.status != RecordedRunStatus.QUEUED.value:
        return  # started before: its recorded state has moved on
    context = run_input.context
    # Already started and closed: the id is never reused, so there is nothing to do.
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await temporal.start_workflow(
            PipelineRunWorkflow.run,
            run_input,
            id=run.workflow_id,
            task_queue=task_queue,
            execution_timeout=run_input.pipeline.timeout,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            request_eager_start=eager,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(TENANT_KEY, context.tenant),
                    SearchAttributePair(PIPELINE_KEY, context.pipeline),
                ]
            ),
            memo={"tenant": context.tenant, "pipeline": context.pipeline, "run": run.public_id},
        )
