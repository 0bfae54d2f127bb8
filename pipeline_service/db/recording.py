"""`record_run_events`: the only writer of run and step state after a run's first row.

Each event updates the run or one step attempt row and adds its outbox row, all in the
caller's transaction. Event ids come from the workflow (`workflow.uuid4()`), so a recording
that is retried or replayed carries ids already stored, and those events are skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline_service.db.models import (
    OutboxEvent,
    Pipeline,
    PipelineVersion,
    Run,
    StepRun,
    Tenant,
)
from pipeline_service.db.outbox import add_event
from pipeline_service.db.runs import RunNames
from schemas.events import EventType
from schemas.recording import (
    RUN_FINISHED,
    RecordedRunStatus,
    RecordRunEventsInput,
    RecordRunEventsResult,
    RunEvent,
    RunTransition,
    StepTransition,
)
from schemas.run import StepStatus

log = logging.getLogger(__name__)

_RUN_EVENT = {
    RecordedRunStatus.QUEUED: EventType.PIPELINE_QUEUED,
    RecordedRunStatus.RUNNING: EventType.PIPELINE_STARTED,
    RecordedRunStatus.RETRYING: EventType.PIPELINE_STARTED,
    RecordedRunStatus.SUCCEEDED: EventType.PIPELINE_SUCCEEDED,
    RecordedRunStatus.FAILED: EventType.PIPELINE_FAILED,
    RecordedRunStatus.CANCELLED: EventType.PIPELINE_CANCELLED,
}
_FINISHED = {status.value for status in RUN_FINISHED}
_STEP_EVENT = {
    StepStatus.PENDING: EventType.PIPELINE_STEP_STARTED,
    StepStatus.RUNNING: EventType.PIPELINE_STEP_STARTED,
    StepStatus.RETRYING: EventType.PIPELINE_STEP_RETRYING,
    StepStatus.SUCCEEDED: EventType.PIPELINE_STEP_COMPLETED,
    StepStatus.FAILED: EventType.PIPELINE_STEP_FAILED,
    StepStatus.SKIPPED: EventType.PIPELINE_STEP_SKIPPED,
    StepStatus.CANCELLED: EventType.PIPELINE_STEP_CANCELLED,
    StepStatus.COMPENSATING: EventType.PIPELINE_STEP_COMPENSATING,
    StepStatus.COMPENSATED: EventType.PIPELINE_STEP_COMPENSATED,
    StepStatus.COMPENSATION_FAILED: EventType.PIPELINE_STEP_FAILED,
}


def record_run_events(
    session: Session, batch: RecordRunEventsInput, *, assume_new: bool = False
) -> RecordRunEventsResult:
    """Apply a batch of one run's events in order, skipping ids already recorded.

    `assume_new` skips the read of recorded ids: the caller expects none (a batch is recorded
    whole or not at all, so only a retried or replayed one is) and, should the unique event id
    refuse an insert, rolls back and calls again without it."""
    # Up to three reads per batch (run with its names, recorded ids, the steps' attempt rows),
    # then the writes: this sits on the workflow's critical path, once per workflow task.
    found = session.execute(
        select(Run, Tenant.name, Pipeline.name, PipelineVersion.version)
        .join(Tenant, Tenant.id == Run.tenant_id)
        .join(Pipeline, Pipeline.id == Run.pipeline_id)
        .join(PipelineVersion, PipelineVersion.id == Run.version_id)
        .where(Run.workflow_id == batch.workflow_id)
    ).one_or_none()
    if found is None:
        # A workflow started outside the service (e.g. by a test or an old client): nothing
        # to attach the events to.
        log.warning(
            "no run recorded for workflow %s; %d events dropped",
            batch.workflow_id,
            len(batch.events),
        )
        return RecordRunEventsResult(recorded=0, skipped=len(batch.events))
    run, names = found[0], RunNames(found[1], found[2], found[3])
    ids = [event.event_id for event in batch.events]
    seen: set[str] = set()
    if not assume_new:
        seen.update(
            session.scalars(select(OutboxEvent.event_id).where(OutboxEvent.event_id.in_(ids)))
        )
    step_ids = {event.step.step_id for event in batch.events if event.step is not None}
    rows: dict[tuple[str, int], StepRun] = {}
    if step_ids:
        for row in session.scalars(
            select(StepRun).where(StepRun.run_id == run.id, StepRun.step_id.in_(step_ids))
        ):
            rows[(row.step_id, row.attempt)] = row
    recorded = 0
    for event in batch.events:
        if event.event_id in seen:
            continue
        if event.run is not None and run.status in _FINISHED:
            # The run's end is recorded already (by the reconciler, when Temporal ended the
            # workflow while this batch was in flight): the first end stands.
            log.info("run %s finished already; %s ignored", run.workflow_id, event.run.status)
            continue
        seen.add(event.event_id)
        if event.run is not None:
            _apply_run(session, run, names, event, event.run)
        if event.step is not None:
            _apply_step(session, run, names, event, event.step, rows)
        recorded += 1
    return RecordRunEventsResult(recorded=recorded, skipped=len(ids) - recorded)


def _apply_run(
    session: Session, run: Run, names: RunNames, event: RunEvent, change: RunTransition
) -> None:
    run.status = change.status.value
    if change.status in (RecordedRunStatus.RUNNING, RecordedRunStatus.RETRYING):
        run.started_at = run.started_at or change.at
    elif change.status != RecordedRunStatus.QUEUED:
        run.finished_at = change.at
        run.error = change.error
    _outbox(
        session,
        run,
        names,
        event,
        _RUN_EVENT[change.status],
        {
            "status": change.status.value,
            "error": change.error,
            "duration_ms": _ms(run.started_at, run.finished_at),
        },
    )


def _apply_step(
    session: Session,
    run: Run,
    names: RunNames,
    event: RunEvent,
    change: StepTransition,
    rows: dict[tuple[str, int], StepRun],
) -> None:
    row = rows.get((change.step_id, change.attempt))
    if row is None:
        row = StepRun(
            run_id=run.id, step_id=change.step_id, attempt=change.attempt, outputs={}, tables={}
        )
        rows[(change.step_id, change.attempt)] = row
        session.add(row)
    row.type = change.type
    row.status = change.status.value
    row.started_at = change.started_at or row.started_at
    row.finished_at = change.finished_at or row.finished_at
    row.error, row.error_type = change.error, change.error_type
    row.rows_affected = change.rows_affected
    row.outputs = change.outputs
    row.tables = change.tables
    row.log_path = change.log_path or row.log_path
    if change.marked_by is not None:
        row.marked_by, row.mark_reason = change.marked_by, change.mark_reason
    # A step waiting for its next attempt makes the run RETRYING until something runs again.
    if change.status == StepStatus.RETRYING and run.status == RecordedRunStatus.RUNNING.value:
        run.status = RecordedRunStatus.RETRYING.value
    elif change.status == StepStatus.RUNNING and run.status == RecordedRunStatus.RETRYING.value:
        run.status = RecordedRunStatus.RUNNING.value
    _outbox(
        session,
        run,
        names,
        event,
        _STEP_EVENT[change.status],
        {
            "step_id": change.step_id,
            "step_type": change.type,
            "attempt": change.attempt,
            "status": change.status.value,
            "error": change.error,
            "error_type": change.error_type,
            "duration_ms": _ms(row.started_at, row.finished_at),
            **(
                {"marked_by": change.marked_by, "reason": change.mark_reason}
                if change.marked_by
                else {}
            ),
        },
        actor=change.marked_by,
    )


def _outbox(
    session: Session,
    run: Run,
    names: RunNames,
    event: RunEvent,
    type: EventType,
    data: dict[str, Any],
    actor: str | None = None,
) -> None:
    payload = {
        "tenant": names.tenant,
        "pipeline": names.pipeline,
        "version": names.version,
        "run_id": run.public_id,
        "workflow_id": run.workflow_id,
        "logical_date": run.logical_date.isoformat(),
        "time": event.at.isoformat(),
        **data,
    }
    add_event(
        session,
        tenant_id=run.tenant_id,
        key=run.public_id,
        type=type,
        actor=actor or run.actor,
        payload=payload,
        event_id=event.event_id,
    )


def _ms(start: Any, end: Any) -> int | None:
    if start is None or end is None:
        return None
    return int((end - start).total_seconds() * 1000)
