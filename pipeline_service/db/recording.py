"""`record_run_events`: the only writer of run and step state after a run's first row.

Each event updates the run or one step attempt row and adds its outbox row, all in the
caller's transaction. Event ids come from the workflow (`workflow.uuid4()`), so a recording
that is retried or replayed carries ids already stored, and those events are skipped. A step
attempt's own events (`RunEvent.from_attempt`) have ids derived from the Temporal run, step,
attempt and kind: the worker that ran the attempt writes them (in the background) and the
workflow sends them again as its backstop; whichever comes second is skipped. Callers are the
`record_run_event` local activity and the workers' `AttemptRecorder` (activities/recording.py).

It writes with SQLAlchemy Core, not the ORM unit of work (whose per-object bookkeeping cost
more CPU than the database did): one pass over the events computes, in Python, each touched
run's and step attempt's final columns and the outbox rows; then one INSERT of the outbox
rows and one of the new attempt rows (executemany), and UPDATEs of the columns that changed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Select, Table, any_, bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from pipeline_service.db.models import (
    Base,
    OutboxEvent,
    Pipeline,
    PipelineVersion,
    Run,
    StepRun,
    Tenant,
)
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
_IN_CHUNK = 500
"""Ids per `IN (...)` read: well under SQLite's and PostgreSQL's parameter limits."""
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


_RUNS: Table = Base.metadata.tables[Run.__tablename__]
_STEPS: Table = Base.metadata.tables[StepRun.__tablename__]
_OUTBOX: Table = Base.metadata.tables[OutboxEvent.__tablename__]
_TENANTS: Table = Base.metadata.tables[Tenant.__tablename__]
_PIPELINES: Table = Base.metadata.tables[Pipeline.__tablename__]
_VERSIONS: Table = Base.metadata.tables[PipelineVersion.__tablename__]
_RUN_FIELDS = ("status", "started_at", "finished_at", "error")
_STEP_FIELDS = (
    "type",
    "status",
    "started_at",
    "finished_at",
    "error",
    "error_type",
    "rows_affected",
    "outputs",
    "tables",
    "log_path",
    "marked_by",
    "mark_reason",
)


def _one_of(column: ColumnElement[Any], name: str, array: bool) -> ColumnElement[bool]:
    """`column IN (:name...)`; on PostgreSQL `column = ANY(:name)`: one parameter however many
    ids, so psycopg reuses its conversion of the statement (it converts a statement of more
    than 50 parameters anew each time); 4-14% less CPU per run in bench/recording_writes.py."""
    if array:
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


@dataclass(frozen=True)
class _Reads:
    """The three reads, built once (building a statement costs more CPU than SQLAlchemy's
    cached compile of it), in the IN form and the PostgreSQL array form."""

    runs: Select[Any]
    recorded: Select[Any]
    steps: Select[Any]

    @classmethod
    def build(cls, array: bool) -> _Reads:
        runs = (
            select(
                _RUNS.c.id,
                _RUNS.c.tenant_id,
                _RUNS.c.public_id,
                _RUNS.c.workflow_id,
                _RUNS.c.logical_date,
                _RUNS.c.actor,
                _TENANTS.c.name,
                _PIPELINES.c.name,
                _VERSIONS.c.version,
                *(_RUNS.c[name] for name in _RUN_FIELDS),
            )
            .join(_TENANTS, _TENANTS.c.id == _RUNS.c.tenant_id)
            .join(_PIPELINES, _PIPELINES.c.id == _RUNS.c.pipeline_id)
            .join(_VERSIONS, _VERSIONS.c.id == _RUNS.c.version_id)
            .where(_one_of(_RUNS.c.workflow_id, "workflow_ids", array))
        )
        recorded = select(_OUTBOX.c.event_id).where(_one_of(_OUTBOX.c.event_id, "event_ids", array))
        steps = select(
            _STEPS.c.run_id,
            _STEPS.c.step_id,
            _STEPS.c.attempt,
            _STEPS.c.id,
            *(_STEPS.c[name] for name in _STEP_FIELDS),
        ).where(
            _one_of(_STEPS.c.run_id, "run_ids", array),
            _one_of(_STEPS.c.step_id, "step_ids", array),
        )
        return cls(runs, recorded, steps)


_READS = {array: _Reads.build(array) for array in (False, True)}
_INSERT_OUTBOX = insert(_OUTBOX)
_INSERT_STEPS = insert(_STEPS)
_UPDATE = {
    table.name: update(table).where(table.c.id == bindparam("row_id")) for table in (_RUNS, _STEPS)
}
"""The columns set: the keys of the parameters (the columns that changed)."""


@dataclass
class _RunRow:
    """A run as read, then as the batch's events leave it (`status` ... `error`)."""

    id: int
    tenant_id: int
    public_id: str
    workflow_id: str
    logical_date: datetime
    actor: str
    names: RunNames
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    read: tuple[Any, ...] = ()

    def changes(self) -> dict[str, Any]:
        return _changes(self, _RUN_FIELDS, self.read)


@dataclass
class _StepRow:
    """One step attempt row: as read (`id` set) or new, then as the events leave it."""

    run_id: int
    step_id: str
    attempt: int
    id: int | None = None
    type: str = ""
    status: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    error_type: str | None = None
    rows_affected: int | None = None
    outputs: dict[str, Any] | None = None
    tables: dict[str, str] | None = None
    log_path: str | None = None
    marked_by: str | None = None
    mark_reason: str | None = None
    read: tuple[Any, ...] = ()

    def changes(self) -> dict[str, Any]:
        return _changes(self, _STEP_FIELDS, self.read)


def _changes(row: object, fields: tuple[str, ...], read: tuple[Any, ...]) -> dict[str, Any]:
    """The columns whose value differs from the one read (the ORM's rule: no UPDATE of a
    column set to its own value, so a concurrent writer's other columns stand)."""
    changed = {}
    for name, old in zip(fields, read, strict=True):
        value = getattr(row, name)
        if value != old:
            changed[name] = value
    return changed


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
    reads = _READS[session.get_bind().dialect.name == "postgresql"]
    runs = _read_runs(session, reads, {batch.workflow_id for batch in batches})
    seen: set[str] = set()
    if not assume_new:
        ids = [event.event_id for b in batches if b.workflow_id in runs for event in b.events]
        for chunk in range(0, len(ids), _IN_CHUNK):
            seen.update(
                session.scalars(reads.recorded, {"event_ids": ids[chunk : chunk + _IN_CHUNK]})
            )
    rows = _read_steps(
        session,
        reads,
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
    _write(session, list(runs.values()), list(rows.values()), outbox)
    return results


def _read_runs(session: Session, reads: _Reads, workflow_ids: set[str]) -> dict[str, _RunRow]:
    found = session.execute(reads.runs, {"workflow_ids": list(workflow_ids)})
    runs = {}
    for row in found:
        run_id, tenant_id, public_id, workflow_id, logical_date, actor = row[:6]
        state = tuple(row[9:])
        runs[workflow_id] = _RunRow(
            run_id,
            tenant_id,
            public_id,
            workflow_id,
            logical_date,
            actor,
            RunNames(row[6], row[7], row[8]),
            **dict(zip(_RUN_FIELDS, state, strict=True)),
            read=state,
        )
    return runs


def _read_steps(
    session: Session, reads: _Reads, touched: set[tuple[int, str]]
) -> dict[tuple[int, str, int], _StepRow]:
    rows: dict[tuple[int, str, int], _StepRow] = {}
    if not touched:
        return rows
    found = session.execute(
        reads.steps,
        {
            "run_ids": list({run_id for run_id, _ in touched}),
            "step_ids": list({step_id for _, step_id in touched}),
        },
    )
    for values in found:
        run_id, step_id, attempt, row_id = values[:4]
        state = tuple(values[4:])
        rows[(run_id, step_id, attempt)] = _StepRow(
            run_id,
            step_id,
            attempt,
            row_id,
            **dict(zip(_STEP_FIELDS, state, strict=True)),
            read=state,
        )
    return rows


def _applies(run: _RunRow, event: RunEvent, rows: dict[tuple[int, str, int], _StepRow]) -> bool:
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


def _apply_run(run: _RunRow, event: RunEvent, change: RunTransition) -> dict[str, Any]:
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
    run: _RunRow,
    event: RunEvent,
    change: StepTransition,
    rows: dict[tuple[int, str, int], _StepRow],
) -> dict[str, Any]:
    key = (run.id, change.step_id, change.attempt)
    row = rows.get(key)
    if row is None:
        row = rows[key] = _StepRow(run.id, change.step_id, change.attempt)
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
    run: _RunRow,
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


def _write(
    session: Session, runs: list[_RunRow], rows: list[_StepRow], outbox: list[dict[str, Any]]
) -> None:
    """The outbox rows and the new attempt rows in one INSERT each (in event order: ids and
    `seq` ascend as before); the changed columns of existing rows, one UPDATE per column set."""
    if outbox:
        session.execute(_INSERT_OUTBOX, outbox)
    new = [row for row in rows if row.id is None]
    if new:
        session.execute(
            _INSERT_STEPS,
            [
                {
                    "run_id": row.run_id,
                    "step_id": row.step_id,
                    "attempt": row.attempt,
                    **{name: getattr(row, name) for name in _STEP_FIELDS},
                }
                for row in new
            ],
        )
    _update(session, _STEPS, StepRun, [(row.id, row.changes()) for row in rows if row.id])
    _update(session, _RUNS, Run, [(run.id, run.changes()) for run in runs])


def _update(
    session: Session,
    table: Table,
    entity: type[Run] | type[StepRun],
    changed: list[tuple[int, dict[str, Any]]],
) -> None:
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row_id, changes in changed:
        if changes:
            by_columns[tuple(changes)].append({"row_id": row_id, **changes})
    for params in by_columns.values():
        session.execute(_UPDATE[table.name], params)
    if session.identity_map:
        # A caller holding the ORM object of a row written here (e.g. `quotas.end_run`'s run)
        # sees the new values, as it did when this wrote through the ORM.
        for row_id, changes in changed:
            held = session.identity_map.get(identity_key(entity, row_id))
            for name, value in changes.items() if held is not None else ():
                set_committed_value(held, name, value)


def _ms(start: Any, end: Any) -> int | None:
    if start is None or end is None:
        return None
    return max(int((end - start).total_seconds() * 1000), 0)
