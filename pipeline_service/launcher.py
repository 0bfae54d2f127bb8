"""The one way a run starts. Every start path (the API's trigger, later schedules, pipeline
dependencies, Kafka triggers, backfills) calls `launch_run`, which fixes the logical date,
derives the workflow id, records the run (unique workflow id: one run per date or key) and
applies the tenant's quota, and submits it to Temporal — or leaves it waiting in the tenant's
queue (QUEUED, not yet submitted) for the dispatcher (pipeline_service/dispatcher.py)."""

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
from temporalio.service import RPCError, RPCStatusCode

from pipeline_service.bundles import BUNDLE_PREFIX, bundle_dir, default_cache
from pipeline_service.db import pools, quotas
from pipeline_service.db.base import utcnow
from pipeline_service.db.models import Pipeline, PipelineVersion, Run, Tenant
from pipeline_service.db.outbox import add_event
from pipeline_service.db.pipelines import get_pipeline_version
from pipeline_service.db.runs import NewRun, RunView, get_run_by_workflow_id, insert_run
from pipeline_service.db.session import transaction
from pipeline_service.db.tenants import get_tenant
from schemas.events import EventType
from schemas.loading import PipelineValidationError, resolve_params, validate_pipeline
from schemas.pipeline import PipelineDefinition
from schemas.recording import PipelineStatus, RecordedRunStatus
from schemas.run import ReplaySource, RunContext, RunInput, StepResult, Trigger
from workflows.pipeline_run import PipelineRunWorkflow

TENANT_KEY = SearchAttributeKey.for_keyword("LaminarTenant")
PIPELINE_KEY = SearchAttributeKey.for_keyword("LaminarPipeline")


class LaunchRefused(Exception):
    """The run cannot start (paused or archived pipeline, key reused with other params, the
    tenant's quota)."""

    def __init__(self, status: int, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


class Priority:
    """Start order of waiting runs (higher first): an on-time scheduled run goes before the
    backlog of a backfill; manual runs sit between."""

    BACKFILL = -10
    MANUAL = 0
    SCHEDULED = 10


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
    replay: ReplaySource | None = None
    """A dead-letter replay: the quarantined rows the run re-reads (`{{ replay }}`)."""
    replay_of_id: int | None = None
    version: int | None = None
    """The version to run (a retry runs its original's); default: the current one."""
    reuse: dict[str, StepResult] = field(default_factory=dict)
    """Steps done by an earlier run, not run again (retry from failure)."""
    workflow_id: str | None = None
    """Fixed by the caller (a retry names its own); default: derived from date or key."""
    max_parallelism: int | None = None
    """Overrides the definition's (`laminar run --parallelism`)."""
    priority: int = Priority.MANUAL
    """When the tenant's runs wait for a slot: higher starts first (see Priority)."""
    data_interval_end: datetime | None = None
    """The end of the run's data interval (schedules, backfills); default: its logical date."""


@dataclass(frozen=True)
class Launch:
    run: Run
    created: bool
    """False: the request named a run that exists already (same date or idempotency key)."""
    recorded: RunView | None = None
    """A created run's view as just recorded (when it links no other run): what an answer
    shows without reading the run again."""

    @property
    def waiting(self) -> bool:
        """The run waits in the tenant's queue for a concurrency slot."""
        return self.run.submitted_at is None and self.run.status == RecordedRunStatus.QUEUED


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
    sessions: sessionmaker[Session],
    request: LaunchRequest,
    source_dir: Path,
    bundle_cache: Path | None,
) -> tuple[Launch, RunInput | None]:
    with transaction(sessions) as session:
        found = get_pipeline_version(session, request.tenant.id, request.pipeline, request.version)
        if found is None:
            raise LaunchRefused(404, f"pipeline '{request.pipeline}' not found")
        pipeline, version = found
        if pipeline.status in (PipelineStatus.PAUSED.value, PipelineStatus.ARCHIVED.value):
            raise LaunchRefused(
                409, f"pipeline '{pipeline.name}' is {pipeline.status.lower()}; runs cannot start"
            )
        if version is None:
            raise LaunchRefused(404, f"version {request.version} of '{pipeline.name}' not found")
        checked_in, source = run_source(session, pipeline, version, source_dir, bundle_cache)
        definition = validate_pipeline(version.definition, source_dir=checked_in)
        params = resolve_params(definition, request.params)
        logical_date = request.logical_date
        workflow_id = request.workflow_id or workflow_id_for(
            request.tenant.name, pipeline.name, logical_date, request.idempotency_key
        )
        quota = quotas.lock_quota(session, request.tenant.id)
        existing = get_run_by_workflow_id(session, workflow_id)
        if existing is None:
            problems = quotas.definition_problems(quota, [s.type for s in definition.steps])
            if problems:
                raise LaunchRefused(403, "; ".join(problems))
            _check_pools(session, request.tenant, definition)
            submitted_at = _admit(session, request, quota)
        else:
            submitted_at = existing.submitted_at
        options = {
            "reuse": {k: v.model_dump(mode="json") for k, v in request.reuse.items()},
            "max_parallelism": request.max_parallelism,
            "replay": request.replay.model_dump(by_alias=True) if request.replay else None,
            "data_interval_end": (
                request.data_interval_end.isoformat() if request.data_interval_end else None
            ),
        }
        run, created = (
            (existing, False)
            if existing is not None
            else insert_run(
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
                    replay_of_id=request.replay_of_id,
                    priority=request.priority,
                    submitted_at=submitted_at,
                    launch_options=options,
                ),
            )
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
                    **run_payload(request.tenant, pipeline, version, run),
                    "waiting": run.submitted_at is None,
                },
            )
            if quota.queue_depth is not None and run.submitted_at is None:
                # drop_oldest: the queue was full; the oldest waiting run makes room.
                excess = quotas.waiting_count(session, request.tenant.id) - quota.queue_depth
                quotas.drop_oldest(
                    session,
                    request.tenant.id,
                    excess,
                    f"dropped from the full queue of tenant '{request.tenant.name}' "
                    f"(overflow policy drop_oldest) for the newer run {run.public_id}",
                )
        recorded = (
            RunView(
                run,
                pipeline.name,
                version.version,
                None,
                None,
                request.tenant.name,
                list(version.definition.get("steps") or []),
            )
            if created and run.retry_of_id is None and run.replay_of_id is None
            else None
        )
        launch = Launch(run, created, recorded)
        if run.submitted_at is None:
            return launch, None
        run_input = build_run_input(request.tenant, pipeline, run, definition, source)
    return launch, run_input


def run_payload(
    tenant: Tenant, pipeline: Pipeline, version: PipelineVersion, run: Run
) -> dict[str, Any]:
    """What a run's lifecycle event says about the run."""
    return {
        "tenant": tenant.name,
        "pipeline": pipeline.name,
        "version": version.version,
        "run_id": run.public_id,
        "workflow_id": run.workflow_id,
        "logical_date": run.logical_date.isoformat(),
        "status": run.status,
        "trigger": run.trigger,
    }


def _check_pools(session: Session, tenant: Tenant, definition: PipelineDefinition) -> None:
    named = {step.pool for step in definition.steps if step.pool is not None}
    missing = pools.missing_pools(session, tenant.id, named) if named else []
    if missing:
        where = [
            f"steps[{i}].pool: pool '{step.pool}' is not defined for tenant '{tenant.name}'"
            for i, step in enumerate(definition.steps)
            if step.pool in missing
        ]
        raise LaunchRefused(422, "; ".join(where) + " (the platform admin sets pools)")


def _admit(session: Session, request: LaunchRequest, quota: quotas.Quota) -> datetime | None:
    """Now (the run takes a slot), None (it waits), or LaunchRefused (429) by the policy."""
    limit = quota.max_concurrent_runs
    if limit is None or quotas.active_runs(session, request.tenant.id) < limit:
        return utcnow()
    full = f"tenant '{request.tenant.name}' has {limit} runs active, its quota of concurrent runs"
    if quota.overflow_policy == quotas.OverflowPolicy.REJECT:
        raise LaunchRefused(
            429,
            f"{full} (overflow policy reject); try again later",
            retry_after=quota.retry_after_seconds,
        )
    if (
        quota.overflow_policy == quotas.OverflowPolicy.QUEUE
        and quota.max_queued_runs is not None
        and quotas.waiting_count(session, request.tenant.id) >= quota.max_queued_runs
    ):
        raise LaunchRefused(
            429,
            f"{full}, and {quota.max_queued_runs} runs wait already (max_queued_runs)",
            retry_after=quota.retry_after_seconds,
        )
    return None


def run_source(
    session: Session,
    pipeline: Pipeline,
    version: PipelineVersion,
    source_dir: Path,
    bundle_cache: Path | None,
) -> tuple[Path, str]:
    """(where to validate the version's files here, the run's `source_dir`): its code bundle
    (`bundle:<digest>`, materialized by each worker) if it has one, else `source_dir`."""
    if version.bundle_digest is None:
        return source_dir, str(source_dir)
    cache = bundle_cache or default_cache()
    here = bundle_dir(session, pipeline.tenant_id, version.bundle_digest, cache)
    return here, BUNDLE_PREFIX + version.bundle_digest


def build_run_input(
    tenant: Tenant, pipeline: Pipeline, run: Run, definition: PipelineDefinition, source: str
) -> RunInput:
    """The workflow input of a recorded run (also of one that waited in the queue)."""
    options = run.launch_options or {}
    context = RunContext(
        tenant=tenant.name,
        pipeline=pipeline.name,
        run_id=run.workflow_id,
        trigger=Trigger(run.trigger),
        logical_date=run.logical_date,
        data_interval_start=run.logical_date,
        data_interval_end=(
            datetime.fromisoformat(options["data_interval_end"])
            if options.get("data_interval_end")
            else run.logical_date
        ),
        params=run.params,
        replay=ReplaySource.model_validate(options["replay"]) if options.get("replay") else None,
    )
    return RunInput(
        pipeline=definition,
        context=context,
        source_dir=source,
        reuse={k: StepResult.model_validate(v) for k, v in (options.get("reuse") or {}).items()},
        max_parallelism=options.get("max_parallelism"),
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
    bundle_cache: Path | None = None,
) -> Launch:
    """Record the run (or find the one it names) and make sure its workflow is started.
    `eager`: a worker runs in this process; the server may hand it the first task at once.
    `bundle_cache`: where versions' code bundles are materialized here to validate them."""
    launch, run_input = await anyio.to_thread.run_sync(
        _record, sessions, request, source_dir, bundle_cache
    )
    if run_input is not None:
        await start_workflow(temporal, launch.run, run_input, task_queue=task_queue, eager=eager)
    return launch


async def start_workflow(
    temporal: Client, run: Run, run_input: RunInput, *, task_queue: str, eager: bool = False
) -> None:
    """Start the run's workflow; a second start of the same run is a no-op (also after it
    finished: the id is never reused)."""
    if run.status != RecordedRunStatus.QUEUED.value or run.submitted_at is None:
        return  # started before (its recorded state has moved on), or waiting for a slot
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


class StartPath:
    """What the start paths that run on a worker (schedule, dependency gate, backfill, Kafka
    trigger) share: the database, the Temporal client, and where their runs go."""

    def __init__(
        self, sessions: sessionmaker[Session], client: Client, *, task_queue: str, source_dir: Path
    ) -> None:
        self.sessions, self.client = sessions, client
        self.task_queue, self.source_dir = task_queue, source_dir

    async def launch(self, request: LaunchRequest) -> Launch | str:
        """`launch_run`; or why the run cannot start (LaunchRefused, PipelineValidationError)."""
        try:
            return await launch_run(
                self.sessions,
                self.client,
                request,
                task_queue=self.task_queue,
                source_dir=self.source_dir,
            )
        except (LaunchRefused, PipelineValidationError) as exc:
            return str(exc)

    async def find_tenant(self, name: str) -> Tenant | None:
        def look_up() -> Tenant | None:
            with self.sessions() as session:
                return get_tenant(session, name)

        return await anyio.to_thread.run_sync(look_up)

    async def cancel(self, workflow_id: str) -> None:
        """Cancel the workflow; one that is gone needs nothing."""
        try:
            await self.client.get_workflow_handle(workflow_id).cancel()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
