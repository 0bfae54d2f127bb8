"""/v1/runs/{id}/retry (from failure, or from a chosen step) and marking a failed step
succeeded or skipped (recorded with who did it and why)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Header
from pydantic import Field

from pipeline_service.api.deps import OperatorDep, ServicesDep, tenant_of
from pipeline_service.api.models import Request, RunDetail
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.api.routers.runs import (
    IDEMPOTENCY_KEY_PATTERN,
    _detail,
    _run,
    finished_run,
    follow_up,
    launch_and_show,
)
from pipeline_service.db import runs as repo
from pipeline_service.db.models import StepRun
from pipeline_service.db.recording import record_run_events
from pipeline_service.db.session import transaction
from pipeline_service.launcher import LaunchRequest
from schemas.recording import (
    RUN_FINISHED,
    RecordedRunStatus,
    RecordRunEventsInput,
    RunEvent,
    StepTransition,
)
from schemas.run import StepResult, StepStatus
from workflows import dag

router = APIRouter(tags=["runs"])

DONE = {StepStatus.SUCCEEDED.value}


class RunRetry(Request):
    from_step: str | None = Field(
        None, description="Run this step and everything downstream of it again; reuse the rest."
    )


class StepMark(Request):
    status: Literal["SUCCEEDED", "SKIPPED"]
    reason: str = Field(min_length=1, max_length=2000)


def _latest_attempts(rows: list[StepRun]) -> dict[str, StepRun]:
    latest: dict[str, StepRun] = {}
    for row in sorted(rows, key=lambda r: r.attempt):
        latest[row.step_id] = row
    return latest


@router.post("/v1/runs/{run_id}/retry", status_code=201, response_model=RunDetail)
async def retry(
    run_id: str,
    body: RunRetry,
    principal: OperatorDep,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(pattern=IDEMPOTENCY_KEY_PATTERN)] = None,
) -> RunDetail:
    """A new run of the same version, params and logical date, linked to this one, that reuses
    the results of the steps that succeeded here (or were marked) and runs the others."""
    tenant = tenant_of(principal)

    def plan() -> LaunchRequest:
        with services.sessions() as session:
            run, definition = finished_run(session, tenant.id, run_id, "retry")
            if body.from_step is None and run.status == RecordedRunStatus.SUCCEEDED.value:
                raise ProblemError(
                    409, f"run {run_id} succeeded: give from_step to run part of it again"
                )
            graph = dag.dependencies(definition.steps)
            again: set[str] = set()
            if body.from_step is not None:
                if body.from_step not in graph:
                    raise ProblemError(422, f"the run's pipeline has no step '{body.from_step}'")
                again = {body.from_step, *dag.downstream(graph, body.from_step)}
            reuse = {
                step_id: StepResult(
                    rows_affected=row.rows_affected,
                    outputs=row.outputs or {},
                    tables=row.tables or {},
                    log_path=row.log_path,
                    started_at=row.started_at,
                    finished_at=row.finished_at,
                    attempt=row.attempt,
                )
                for step_id, row in _latest_attempts(repo.step_runs(session, run)).items()
                if step_id in graph
                and step_id not in again
                and (row.status in DONE or row.marked_by is not None)
            }
            return follow_up(
                session,
                run,
                tenant,
                principal.actor,
                idempotency_key,
                f"retry:{run.public_id}",
                retry_of_id=run.id,
                reuse=reuse,
            )

    request = await anyio.to_thread.run_sync(plan)
    return (await launch_and_show(services, request, "retry"))[1]


@router.post("/v1/runs/{run_id}/steps/{step_id}/mark", response_model=RunDetail)
def mark_step(
    run_id: str, step_id: str, body: StepMark, principal: OperatorDep, services: ServicesDep
) -> RunDetail:
    """Mark a failed (or skipped, cancelled) step of a finished run SUCCEEDED or SKIPPED: a
    retry then reuses it. Recorded with the key's name and the reason."""
    tenant = tenant_of(principal)
    with services.sessions() as session:
        run = _run(session, tenant.id, run_id)
        if run.status not in RUN_FINISHED:
            raise ProblemError(409, f"run {run_id} is {run.status}: mark steps of finished runs")
        latest = _latest_attempts(repo.step_runs(session, run)).get(step_id)
        if latest is None:
            raise not_found(f"step '{step_id}' of run {run_id}")
        if latest.status in DONE:
            raise ProblemError(409, f"step '{step_id}' succeeded already")
        now = datetime.now(UTC)
        change = StepTransition(
            step_id=step_id,
            type=latest.type,
            attempt=latest.attempt,
            status=StepStatus(body.status),
            started_at=latest.started_at,
            finished_at=latest.finished_at,
            error=latest.error,
            error_type=latest.error_type,
            outputs=latest.outputs or {},
            tables=latest.tables or {},
            marked_by=principal.actor,
            mark_reason=body.reason,
        )
        workflow_id = run.workflow_id
    batch = RecordRunEventsInput(
        workflow_id=workflow_id,
        events=[RunEvent(event_id=str(uuid.uuid4()), at=now, step=change)],
    )
    with transaction(services.sessions) as session:
        record_run_events(session, batch)
    with services.sessions() as session:
        return _detail(session, run.id, services.step_logs)
