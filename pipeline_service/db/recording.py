"""`record_run_events`: the only writer of run and step state after a run's first row.

Each event updates the run or one step attempt row and adds its outbox row, all in the
caller's transaction. Event ids come from the workflow (`workflow.uuid4()`), so a recording
that is retried or replayed carries ids already stored, and those events are skipped. A step
attempt's own events (`RunEvent.from_attempt`) have ids derived from the Temporal run, step,
attempt and kind: the worker that ran the attempt writes them (in the background) and the
workflow sends them again as its backstop; whichever comes second is skipped. Callers are the
`record_run_event` local activity and the workers' `AttemptRecorder` (activities/recording.py).

One pass over the events computes, in Python, each touched run's and step attempt's final
columns and the outbox rows; db/recording_rows.py then writes them in a few statements.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from pipeline_service.db.recording_rows import (
    RunRow,
    StepKey,
    StepRow,
    read_recorded,
    read_runs,
    read_steps,
    write,
)
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
_FINAL_STEP = {
    status.value
    for status in (
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATION_FAILED,
    )
}
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
    """Apply a batch of one run's events in order, skipping ids already recorded."""
    return record_many(session, [batch], assume_new=assume_new)[0]


def record_many(
    session: Session, batches: list[RecordRunEventsInput], *, assume_new: bool = False
) -> list[RecordRunEventsResult]:
    """Apply batches (of one run or several) in order, skipping ids already recorded.

    Three reads for all the batches together, whatever their number: the runs with their
    names, the ids recorded already, the step attempt rows the events touch; then the writes.
    `assume_new` skips the read of recorded ids: the caller expects none (a batch is recorded
    whole or not at all, so only a retried or replayed one is) and, should the unique event id
    refuse an insert, rolls back and calls again without it."""
    # Session.execute autoflushes before Core statements too: a caller's pending ORM change
    # to a run is written before this reads it (tests/integration/test_recording_writes.py).
    runs = read_runs(session, {batch.workflow_id for batch in batches})
    seen: set[str] = set()
    if not assume_new:
        seen = read_recorded(
            session,
            [event.event_id for b in batches if b.workflow_id in runs for event in b.events],
        )
    rows = read_steps(
        session,
        {
            (runs[b.workflow_id].id, event.step.step_id)
            for b in batches
            if b.workflow_id in runs
            for event in b.events
            if event.step is not None
        },
    )
    outbox: list[dict[str, Any]] = []
    results = []
    for batch in batches:
        run = runs.get(batch.workflow_id)
        if run is None:
            # A workflow started outside the service (e.g. by a test or an old client): nothing
            # to attach the events to.
            log.warning(
                "no run recorded for workflow %s; %d events dropped",
                batch.workflow_id,
                len(batch.events),
            )
            results.append(RecordRunEventsResult(recorded=0, skipped=len(batch.events)))
            continue
        recorded = 0
        for event in batch.events:
            if event.event_id in seen or not _applies(run, event, rows):
                continue
            seen.add(event.event_id)
            if event.run is not None:
                outbox.append(_apply_run(run, event, event.run))
            if event.step is not None:
                outbox.append(_apply_step(run, event, event.step, rows))
            recorded += 1
        results.append(
            RecordRunEventsResult(recorded=recorded, skipped=len(batch.events) - recorded)
        )
    write(session, list(runs.values()), list(rows.values()), outbox)
    return results


def _applies(run: RunRow, event: RunEvent, rows: dict[StepKey, StepRow]) -> bool:
    if run.status in _FINISHED and (event.run is not None or event.from_attempt):
        # The run's end is recorded already (by the reconciler, when Temporal ended the
        # workflow while this batch was in flight; or an attempt's event that the workflow's
        # own recording of the run's end has covered): the first end stands.
        log.info("run %s finished already; event %s ignored", run.workflow_id, event.event_id)
        return False
    if not event.from_attempt:
        return True
    if event.run is not None:  # the run's start, implied by an attempt's: only once
        return run.started_at is None
    assert event.step is not None
    row = rows.get((run.id, event.step.step_id, event.step.attempt))
    # An attempt's own event arriving after the workflow decided the attempt's fate (cancelled
    # it, or recorded its end from its own state) changes nothing.
    return row is None or row.status not in _FINAL_STEP


def _apply_run(run: RunRow, event: RunEvent, change: RunTransition) -> dict[str, Any]:
    run.status = change.status.value
    if change.status in (RecordedRunStatus.RUNNING, RecordedRunStatus.RETRYING):
        run.started_at = run.started_at or change.at
    elif change.status != RecordedRunStatus.QUEUED:
        # Not before the start: a start recorded by a step's worker carries that worker's
        # clock, while a workflow's time stands still through a task of local steps.
        run.finished_at = max(change.at, run.started_at) if run.started_at else change.at
        run.error = change.error
    return _outbox(
        run,
        event,
        _RUN_EVENT[change.status],
        {
            "status": change.status.value,
            "error": change.error,
            "duration_ms": _ms(run.started_at, run.finished_at),
        },
    )


def _apply_step(
    run: RunRow,
    event: RunEvent,
    change: StepTransition,
    rows: dict[StepKey, StepRow],
) -> dict[str, Any]:
    key = (run.id, change.step_id, change.attempt)
    row = rows.get(key)
    if row is None:
        row = rows[key] = StepRow(run.id, change.step_id, change.attempt)
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
    return _outbox(
        run,
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
    run: RunRow,
    event: RunEvent,
    type: EventType,
    data: dict[str, Any],
    actor: str | None = None,
) -> dict[str, Any]:
    """The outbox row of one event (its columns; `created_at` is the column's default)."""
    payload = {
        "tenant": run.names.tenant,
        "pipeline": run.names.pipeline,
        "version": run.names.version,
        "run_id": run.public_id,
        "workflow_id": run.workflow_id,
        "logical_date": run.logical_date.isoformat(),
        "time": event.at.isoformat(),
        **data,
    }
    return {
        "event_id": event.event_id,
        "tenant_id": run.tenant_id,
        "key": run.public_id,
        "type": type.value,
        "actor": actor or run.actor,
        "payload": payload,
    }


def _ms(start: Any, end: Any) -> int | None:
    if start is None or end is None:
        return None
    return max(int((end - start).total_seconds() * 1000), 0)
