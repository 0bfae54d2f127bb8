"""Run, step attempt and outbox rows as `record_many` (db/recording.py) reads and writes them,
with SQLAlchemy Core rather than the ORM unit of work, whose per-object bookkeeping cost the
worker more CPU than the database did: the runs and attempt rows a group of batches touches are
read into plain objects, the events change those in Python, and `write` sends the outbox rows
and the new attempt rows in one INSERT each (executemany) and the changed columns of the rows
read in one UPDATE per set of columns (bench/recording_writes.py measures it)."""

from __future__ import annotations

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

StepKey = tuple[int, str, int]
"""(run row id, step id, attempt)."""

_RUNS: Table = Base.metadata.tables[Run.__tablename__]
_STEPS: Table = Base.metadata.tables[StepRun.__tablename__]
_OUTBOX: Table = Base.metadata.tables[OutboxEvent.__tablename__]
_TENANTS: Table = Base.metadata.tables[Tenant.__tablename__]
_PIPELINES: Table = Base.metadata.tables[Pipeline.__tablename__]
_VERSIONS: Table = Base.metadata.tables[PipelineVersion.__tablename__]
_IN_CHUNK = 500
"""Ids per read of recorded ids: well under SQLite's and PostgreSQL's parameter limits."""
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
        if array:
            # PostgreSQL: lock the runs' rows (in id order, so two writers never deadlock) until
            # this transaction ends. Writers of one run (a worker's recorder, another worker's,
            # the workflow's recording, the reconciler) then take turns and each decides on the
            # run as the one before left it: without the lock, a late "run started" read a run
            # as RUNNING while the reconciler ended it, and wrote RUNNING over FAILED. SQLite
            # needs none: its writers take turns from BEGIN IMMEDIATE on.
            runs = runs.order_by(_RUNS.c.id).with_for_update(of=_RUNS)
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


def _reads(session: Session) -> _Reads:
    return _READS[session.get_bind().dialect.name == "postgresql"]


_INSERT_OUTBOX = insert(_OUTBOX)
_INSERT_STEPS = insert(_STEPS)
_UPDATE = {
    table.name: update(table).where(table.c.id == bindparam("row_id")) for table in (_RUNS, _STEPS)
}
"""The columns set: the keys of the parameters (the columns that changed)."""


@dataclass
class RunRow:
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
class StepRow:
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


def read_runs(session: Session, workflow_ids: set[str]) -> dict[str, RunRow]:
    """The runs of these workflow ids, with their names, by workflow id."""
    found = session.execute(_reads(session).runs, {"workflow_ids": list(workflow_ids)})
    runs = {}
    for row in found:
        run_id, tenant_id, public_id, workflow_id, logical_date, actor = row[:6]
        state = tuple(row[9:])
        runs[workflow_id] = RunRow(
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


def read_recorded(session: Session, event_ids: list[str]) -> set[str]:
    """Which of these event ids the outbox holds already."""
    recorded: set[str] = set()
    for chunk in range(0, len(event_ids), _IN_CHUNK):
        ids = event_ids[chunk : chunk + _IN_CHUNK]
        recorded.update(session.scalars(_reads(session).recorded, {"event_ids": ids}))
    return recorded


def read_steps(session: Session, touched: set[tuple[int, str]]) -> dict[StepKey, StepRow]:
    """The attempt rows of these (run row id, step id) pairs (and maybe a few more)."""
    rows: dict[StepKey, StepRow] = {}
    if not touched:
        return rows
    found = session.execute(
        _reads(session).steps,
        {
            "run_ids": list({run_id for run_id, _ in touched}),
            "step_ids": list({step_id for _, step_id in touched}),
        },
    )
    for values in found:
        run_id, step_id, attempt, row_id = values[:4]
        state = tuple(values[4:])
        rows[(run_id, step_id, attempt)] = StepRow(
            run_id,
            step_id,
            attempt,
            row_id,
            **dict(zip(_STEP_FIELDS, state, strict=True)),
            read=state,
        )
    return rows


def write(
    session: Session, runs: list[RunRow], rows: list[StepRow], outbox: list[dict[str, Any]]
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
            if held is not None:
                for name, value in changes.items():
                    set_committed_value(held, name, value)
