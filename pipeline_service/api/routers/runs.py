"""/v1/pipelines/{name}/runs (trigger) and /v1/runs: list, get (steps with every attempt),
cancel. Runs start only through the launcher; their state changes only by record_run_event."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Response
from sqlalchemy.orm import Session
from temporalio.service import RPCError, RPCStatusCode

from pipeline_service.api.definitions import invalid
from pipeline_service.api.deps import (
    OperatorDep,
    ReaderDep,
    ServicesDep,
    SessionDep,
    tenant_of,
)
from pipeline_service.api.models import (
    PoolWaitPublic,
    RunDetail,
    RunPage,
    RunPublic,
    RunTrigger,
    StepAttempt,
    StepPublic,
)
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.api.routers.pipelines import decode_cursor, encode_cursor
from pipeline_service.api.services import Services
from pipeline_service.api.step_logs import StepLogs
from pipeline_service.db import quotas
from pipeline_service.db import runs as repo
from pipeline_service.db.models import PipelineVersion, Run, Tenant
from pipeline_service.db.pipelines import get_pipeline
from pipeline_service.db.pools import waiting_steps
from pipeline_service.db.recording import record_run_events
from pipeline_service.db.session import transaction
from pipeline_service.launcher import LaunchRefused, LaunchRequest, launch_run, workflow_id_for
from schemas.loading import PipelineValidationError
from schemas.pipeline import PipelineDefinition
from schemas.recording import (
    RUN_FINISHED,
    RecordedRunStatus,
    RecordRunEventsInput,
    RunEvent,
    RunTransition,
)
from schemas.run import Trigger

router = APIRouter(tags=["runs"])

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    return int((end - start).total_seconds() * 1000) if start and end else None


def _public(view: repo.RunView) -> RunPublic:
    return RunPublic(**_public_fields(view))


def _public_fields(view: repo.RunView) -> dict[str, Any]:
    run = view.run
    return dict(
        id=run.public_id,
        pipeline=view.pipeline,
        version=view.version,
        status=run.status,
        trigger=run.trigger,
        actor=run.actor,
        logical_date=run.logical_date,
        params=run.params,
        workflow_id=run.workflow_id,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        duration_ms=_ms(run.started_at, run.finished_at),
        error=run.error,
        retry_of=view.retry_of,
        replay_of=view.replay_of,
        replay=(run.launch_options or {}).get("replay"),
        waiting=run.submitted_at is None and run.status == RecordedRunStatus.QUEUED.value,
        priority=run.priority,
    )


def _attempt(row: repo.StepRecord, log_tail: str | None) -> StepAttempt:
    return StepAttempt(
        attempt=row.attempt,
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_ms=_ms(row.started_at, row.finished_at),
        error=row.error,
        error_type=row.error_type,
        rows_affected=row.rows_affected,
        outputs=row.outputs or {},
        tables=row.tables or {},
        log_tail=log_tail,
        marked_by=row.marked_by,
        mark_reason=row.mark_reason,
    )


def _detail(reader: repo.Reader, run_id: int, logs: StepLogs) -> RunDetail:
    """The detail of a run by its row id (the run itself is read with its view)."""
    return _detail_of(reader, repo.run_view(reader, run_id), logs)


def _detail_of(reader: repo.Reader, view: repo.RunView, logs: StepLogs) -> RunDetail:
    run = view.run
    rows = repo.step_records(reader, run.id)
    tails = logs.tails(view.tenant, run.workflow_id, rows)
    waits: dict[str, PoolWaitPublic] = {}
    # Only steps that name a pool wait for one (workflows/pools.py).
    if run.status not in RUN_FINISHED and any(step.get("pool") for step in view.steps):
        if isinstance(reader, Session):
            waiting = waiting_steps(reader, run.workflow_id)
        else:  # the pool's rows through the ORM, in the connection's transaction
            with Session(reader) as session:
                waiting = waiting_steps(session, run.workflow_id)
        for activity_id, wait in waiting.items():
            # `step`, or `step#n` for a later execution of it (a retry from the workflow).
            waits[activity_id.split("#", 1)[0]] = PoolWaitPublic(
                pool=wait.pool, since=wait.since, position=wait.position
            )
    return _assemble(view, rows, tails, waits)


def _assemble(
    view: repo.RunView,
    rows: list[repo.StepRecord],
    tails: dict[tuple[str, int], str | None],
    waits: dict[str, PoolWaitPublic],
) -> RunDetail:
    """The detail of a run from its view, its step attempts, their log tails and pool waits."""
    attempts: dict[str, list[repo.StepRecord]] = {}
    for row in rows:
        attempts.setdefault(row.step_id, []).append(row)
    steps = []
    for step in view.steps:
        ids = [step["id"]]
        if step.get("for_each"):  # its instances, `<id>[<index>]`, in item order
            prefix = f"{step['id']}["
            found = [s for s in attempts if s.startswith(prefix) and s[len(prefix) : -1].isdigit()]
            ids += sorted(found, key=lambda s: int(s[len(prefix) : -1]))
        for step_id in ids:
            rows = sorted(attempts.get(step_id, []), key=lambda r: r.attempt)
            steps.append(
                StepPublic(
                    step_id=step_id,
                    type=step.get("type", ""),
                    status=rows[-1].status if rows else "PENDING",
                    attempts=[_attempt(r, tails.get((r.step_id, r.attempt))) for r in rows],
                    waiting_for_pool=waits.get(step_id),
                )
            )
    return RunDetail(**_public_fields(view), steps=steps)


def refused(exc: LaunchRefused) -> ProblemError:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return ProblemError(exc.status, exc.detail, headers=headers)


def _run(session: Session, tenant_id: int, run_id: str) -> Run:
    run = repo.get_run(session, tenant_id, run_id)
    if run is None:
        raise not_found(f"run '{run_id}'")
    return run


def finished_run(
    session: Session, tenant_id: int, run_id: str, action: str
) -> tuple[Run, PipelineDefinition]:
    """The tenant's finished run and the definition of the version it ran, for `action` (retry,
    replay): a run still going gets 409."""
    run = _run(session, tenant_id, run_id)
    if run.status not in RUN_FINISHED:
        raise ProblemError(409, f"run {run_id} is {run.status}: {action} a finished run")
    version = session.get(PipelineVersion, run.version_id)
    assert version is not None
    return run, PipelineDefinition.model_validate(version.definition)


def follow_up(
    session: Session,
    run: Run,
    tenant: Tenant,
    actor: str,
    idempotency_key: str | None,
    label: str,
    **links: Any,
) -> LaunchRequest:
    """A new run of `run`'s version, params and logical date (a retry or a replay), under its
    own workflow id `<tenant>/<pipeline>/<label>:<key or random>`; `links` name what it reuses
    and which run it follows."""
    names = repo.run_names(session, run)
    suffix = idempotency_key or uuid.uuid4().hex[:12]
    return LaunchRequest(
        tenant=tenant,
        pipeline=names.pipeline,
        actor=actor,
        params=run.params,
        logical_date=run.logical_date,
        idempotency_key=idempotency_key,
        version=names.version,
        workflow_id=f"{tenant.name}/{names.pipeline}/{label}:{suffix}",
        **links,
    )


@router.post("/v1/pipelines/{name}/runs", status_code=201, response_model=RunDetail)
async def trigger(
    name: str,
    body: RunTrigger,
    principal: OperatorDep,
    services: ServicesDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="The same key returns the same run (also when requests race).",
        ),
    ] = None,
) -> RunDetail:
    """Start a run (201), or return the run this key or logical date already started (200)."""
    tenant = tenant_of(principal)
    rerun_of = (
        await anyio.to_thread.run_sync(
            _dated_run_check, services, tenant.id, tenant.name, name, body
        )
        if body.logical_date is not None
        else None
    )
    request = LaunchRequest(
        tenant=tenant,
        pipeline=name,
        actor=principal.actor,
        params=body.params,
        logical_date=body.logical_date,
        idempotency_key=idempotency_key,
        retry_of_id=rerun_of.id if rerun_of else None,
        workflow_id=_rerun_id(rerun_of, idempotency_key) if rerun_of else None,
    )
    created, detail = await launch_and_show(services, request, "manual")
    if not created:
        response.status_code = 200
    return detail


async def launch_and_show(
    services: Services, request: LaunchRequest, trigger: str
) -> tuple[bool, RunDetail]:
    """Start a run through the launcher for an API request (trigger, retry, replay): whether it
    was created (not an earlier run for the same key), and its detail. Every refusal becomes a
    problem body: the quota's 429/403, an invalid definition's 422, an unreachable or refusing
    Temporal's 503 (the run is recorded; the same Idempotency-Key sends it again)."""
    try:
        temporal = await services.temporal_client()
    except Exception as exc:
        raise ProblemError(
            503, f"Temporal is not reachable at {services.settings.temporal_address}: {exc}"
        ) from None
    try:
        launch = await launch_run(
            services.sessions,
            temporal,
            request,
            task_queue=services.settings.task_queue,
            source_dir=services.settings.source_dir,
            bundle_cache=services.settings.bundle_cache,
        )
    except LaunchRefused as exc:
        raise refused(exc) from None
    except PipelineValidationError as exc:
        raise invalid(exc, None) from None
    except RPCError as exc:
        raise ProblemError(
            503,
            f"the run was recorded but Temporal refused to start it ({exc.message}); "
            "send the request again with the same Idempotency-Key",
        ) from None
    if launch.created:
        services.metrics.runs_started.labels(request.tenant.name, trigger).inc()
    if launch.recorded is not None:
        # Just recorded: no step has an attempt or waits for a pool yet; nothing to read.
        return True, _assemble(launch.recorded, [], {}, {})
    return launch.created, await anyio.to_thread.run_sync(_answer, services, launch.run.id)


_NOT_BY_HAND = {Trigger.SCHEDULE.value, Trigger.BACKFILL.value, Trigger.DEPENDENCY.value}


def _dated_run_check(
    services: Services, tenant_id: int, tenant: str, name: str, body: RunTrigger
) -> Run | None:
    """A logical date that already has a scheduled (backfill, dependency) run: refused, or with
    `rerun` the run to run again. None: start (or return) the date's run as usual."""
    if body.logical_date is None:
        return None
    with services.sessions() as session:
        existing = repo.get_run_by_workflow_id(
            session, workflow_id_for(tenant, name, body.logical_date, None)
        )
        if existing is None or existing.tenant_id != tenant_id:
            return None
        if existing.trigger not in _NOT_BY_HAND and not body.rerun:
            return None  # the same manual request again: answered with its run (200)
        if not body.rerun:
            raise ProblemError(
                409,
                f"{body.logical_date.isoformat()} already has a {existing.trigger} run "
                f"({existing.public_id}, {existing.status}); send rerun: true "
                "(`laminar runs trigger --rerun`) to run it again",
            )
        return existing


def _rerun_id(run: Run, key: str | None) -> str:
    """A rerun's own workflow id: with an Idempotency-Key the same request is the same rerun."""
    suffix = f"key:{key}" if key else uuid.uuid4().hex[:12]
    return f"{run.workflow_id}/rerun:{suffix}"


@router.get("/v1/runs", response_model=RunPage)
def list_runs(
    principal: ReaderDep,
    session: SessionDep,
    pipeline: str | None = None,
    status: RecordedRunStatus | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunPage:
    """Runs of the caller's tenant, newest first; filter by pipeline, status and time."""
    tenant = tenant_of(principal)
    pipeline_id = None
    if pipeline is not None:
        found = get_pipeline(session, tenant.id, pipeline)
        if found is None:
            raise not_found(f"pipeline '{pipeline}'")
        pipeline_id = found.id
    for value in (created_after, created_before):
        if value is not None and value.tzinfo is None:
            raise ProblemError(422, "created_after/created_before need a time zone (e.g. Z)")
    rows = repo.list_runs(
        session,
        tenant.id,
        pipeline_id=pipeline_id,
        status=status.value if status else None,
        created_after=created_after,
        created_before=created_before,
        before_id=decode_cursor(cursor),
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return RunPage(
        items=[_public(view) for view in repo.run_views(session, rows)],
        next_cursor=encode_cursor(rows[-1].id) if more else None,
    )


@router.get("/v1/runs/{run_id}", response_model=RunDetail)
async def get_run(run_id: str, principal: ReaderDep, services: ServicesDep) -> RunDetail:
    """The run with every step and every attempt of it (errors, durations, log tail)."""
    tenant_id, logs = tenant_of(principal).id, services.step_logs

    def load() -> RunDetail | None:
        # A pooled connection (no ORM session: two Core queries), checked out and back within
        # this one thread hop, so none stays out while the request waits for another thread;
        # committed, not rolled back (see db/session.py's `transaction`).
        with services.engine.begin() as connection:
            view = repo.get_run_view(connection, tenant_id, run_id)
            return None if view is None else _detail_of(connection, view, logs)

    detail = await anyio.to_thread.run_sync(load)
    if detail is None:
        raise not_found(f"run '{run_id}'")
    return detail


@router.post("/v1/runs/{run_id}/cancel", status_code=202, response_model=RunDetail)
async def cancel(run_id: str, principal: OperatorDep, services: ServicesDep) -> RunDetail:
    """Ask the run to stop: running steps are cancelled; the run ends CANCELLED."""
    tenant = tenant_of(principal)

    def load() -> Run:
        with services.sessions() as session:
            return _run(session, tenant.id, run_id)

    run = await anyio.to_thread.run_sync(load)
    if run.status in RUN_FINISHED:
        raise ProblemError(409, f"run {run_id} has finished ({run.status})")
    if await anyio.to_thread.run_sync(_cancel_waiting, services, run, principal.actor):
        return await anyio.to_thread.run_sync(_answer, services, run.id)
    temporal = await services.temporal_client()
    try:
        await temporal.get_workflow_handle(run.workflow_id).cancel()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise ProblemError(503, f"Temporal refused the cancellation: {exc.message}") from None
        # Never started (recorded, then Temporal was unreachable): it ends here.
        await anyio.to_thread.run_sync(_cancel_unstarted, services, run)

    return await anyio.to_thread.run_sync(_answer, services, run.id)


def _answer(services: Services, run_id: int) -> RunDetail:
    with services.engine.begin() as connection:  # committed: see get_run
        return _detail(connection, run_id, services.step_logs)


def _cancel_waiting(services: Services, run: Run, actor: str) -> bool:
    """Cancel a run still waiting in the tenant's queue (under the tenant's lock, so the
    dispatcher cannot start it meanwhile); False if it has a slot (its workflow runs)."""
    with transaction(services.sessions) as session:
        quotas.lock_quota(session, run.tenant_id)
        fresh = session.get(Run, run.id)
        if fresh is None or fresh.submitted_at is not None or fresh.status in RUN_FINISHED:
            return False
        quotas.cancel_waiting(session, fresh, f"cancelled by {actor} while waiting for a slot")
        return True


def _cancel_unstarted(services: Services, run: Run) -> None:
    now = datetime.now(UTC)
    change = RunTransition(status=RecordedRunStatus.CANCELLED, at=now, error="cancelled")
    batch = RecordRunEventsInput(
        workflow_id=run.workflow_id,
        events=[RunEvent(event_id=str(uuid.uuid4()), at=now, run=change)],
    )
    with transaction(services.sessions) as session:
        record_run_events(session, batch)
