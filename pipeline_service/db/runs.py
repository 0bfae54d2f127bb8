"""Runs and step attempts, always within one tenant. Rows change only through the launcher
(a run's first row) and `record_run_event` (everything after)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Row, Select, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pipeline_service.db.models import Base, Pipeline, PipelineVersion, Run, StepRun, Tenant


def new_public_id() -> str:
    """Opaque and URL-safe; says nothing about the tenant, pipeline or order of runs. Never
    starts with `-`: `laminar runs show -7Xb...` would take the id for an option (1 run in 64)."""
    while (public_id := secrets.token_urlsafe(12)).startswith("-"):
        pass
    return public_id


@dataclass(frozen=True)
class NewRun:
    tenant_id: int
    pipeline_id: int
    version_id: int
    workflow_id: str
    status: str
    trigger: str
    actor: str
    logical_date: datetime
    params: dict[str, Any]
    idempotency_key: str | None = None
    retry_of_id: int | None = None
    replay_of_id: int | None = None
    priority: int = 0
    submitted_at: datetime | None = None
    launch_options: dict[str, Any] | None = None


def insert_run(session: Session, new: NewRun) -> tuple[Run, bool]:
    """(the run, True) when this call created it; (the existing run, False) when a run with
    its workflow id exists already — also when a concurrent request wins the race."""
    # One statement for a new run: INSERT ... ON CONFLICT (workflow_id) DO NOTHING RETURNING.
    # PostgreSQL makes it wait for a concurrent insert of the same workflow id to commit (then
    # it inserts nothing) or roll back (then it inserts); SQLite's writers take turns.
    dialect_insert = (
        postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    )
    statement = (
        dialect_insert(Run)
        .values(public_id=new_public_id(), **new.__dict__)
        .on_conflict_do_nothing(index_elements=[Run.workflow_id])
        .returning(Run)
    )
    run = session.scalars(statement).one_or_none()
    if run is not None:
        return run, True
    existing = get_run_by_workflow_id(session, new.workflow_id)
    if existing is None:  # inserted and deleted since (its tenant or pipeline, say)
        raise LookupError(f"run {new.workflow_id} was deleted while it was being created")
    return existing, False


def get_run_by_workflow_id(session: Session, workflow_id: str) -> Run | None:
    return session.scalars(select(Run).where(Run.workflow_id == workflow_id)).one_or_none()


def get_run(session: Session, tenant_id: int, public_id: str) -> Run | None:
    return session.scalars(
        select(Run).where(Run.tenant_id == tenant_id, Run.public_id == public_id)
    ).one_or_none()


def list_runs(
    session: Session,
    tenant_id: int,
    *,
    pipeline_id: int | None = None,
    status: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Run]:
    """Newest first; `before_id` continues a page (keyset pagination on the run's row id)."""
    query = select(Run).where(Run.tenant_id == tenant_id)
    if pipeline_id is not None:
        query = query.where(Run.pipeline_id == pipeline_id)
    if status:
        query = query.where(Run.status == status)
    if created_after is not None:
        query = query.where(Run.created_at >= created_after)
    if created_before is not None:
        query = query.where(Run.created_at < created_before)
    if before_id is not None:
        query = query.where(Run.id < before_id)
    return list(session.scalars(query.order_by(Run.id.desc()).limit(limit)))


def step_runs(session: Session, run: Run) -> list[StepRun]:
    return list(
        session.scalars(select(StepRun).where(StepRun.run_id == run.id).order_by(StepRun.id))
    )


@dataclass(frozen=True)
class RunNames:
    tenant: str
    pipeline: str
    version: int


def run_names(session: Session, run: Run) -> RunNames:
    """The tenant, pipeline and version number of a run (for events and answers)."""
    row = session.execute(
        select(Tenant.name, Pipeline.name, PipelineVersion.version)
        .join(Pipeline, Pipeline.tenant_id == Tenant.id)
        .join(PipelineVersion, PipelineVersion.pipeline_id == Pipeline.id)
        .where(Pipeline.id == run.pipeline_id, PipelineVersion.id == run.version_id)
    ).one()
    return RunNames(row[0], row[1], row[2])


class RunRecord(Protocol):
    """A run's columns as the API answers with them: an ORM `Run`, or a row of `runs` read
    with SQLAlchemy Core (the run read, the API's hottest request, skips the ORM)."""

    id: int
    public_id: str
    workflow_id: str
    status: str
    trigger: str
    actor: str
    logical_date: datetime
    params: dict[str, Any]
    launch_options: dict[str, Any] | None
    priority: int
    submitted_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


class StepRecord(Protocol):
    """A step attempt's columns: an ORM `StepRun` or a row of `step_runs` (see RunRecord)."""

    step_id: str
    attempt: int
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    error_type: str | None
    rows_affected: int | None
    outputs: dict[str, Any] | None
    tables: dict[str, str] | None
    log_path: str | None
    marked_by: str | None
    mark_reason: str | None


@dataclass(frozen=True)
class RunView:
    """A run with what its API answer names: pipeline, version number, the runs it retries or
    replays, its tenant and (for the detail view) its version's step list. Read in one query."""

    run: RunRecord
    pipeline: str
    version: int
    retry_of: str | None
    replay_of: str | None
    tenant: str
    steps: list[dict[str, Any]]


_RUNS: Table = Base.metadata.tables[Run.__tablename__]
_STEP_RUNS: Table = Base.metadata.tables[StepRun.__tablename__]
_PIPELINES: Table = Base.metadata.tables[Pipeline.__tablename__]
_VERSIONS: Table = Base.metadata.tables[PipelineVersion.__tablename__]
_TENANTS: Table = Base.metadata.tables[Tenant.__tablename__]


def _view_query(*, steps: bool) -> Select[Any]:
    """A run's columns, then its view's (`_view`): Core, not the ORM, whose per-row
    bookkeeping was most of a run read's CPU."""
    retried, replayed = _RUNS.alias("retried"), _RUNS.alias("replayed")
    columns: list[Any] = [
        *_RUNS.c,
        _PIPELINES.c.name,
        _VERSIONS.c.version,
        retried.c.public_id,
        replayed.c.public_id,
        _TENANTS.c.name,
    ]
    if steps:
        columns.append(_VERSIONS.c.definition["steps"])
    return (
        select(*columns)
        .join(_PIPELINES, _PIPELINES.c.id == _RUNS.c.pipeline_id)
        .join(_VERSIONS, _VERSIONS.c.id == _RUNS.c.version_id)
        .join(_TENANTS, _TENANTS.c.id == _RUNS.c.tenant_id)
        .outerjoin(retried, retried.c.id == _RUNS.c.retry_of_id)
        .outerjoin(replayed, replayed.c.id == _RUNS.c.replay_of_id)
    )


# Built once, with bound parameters: statements are immutable, and SQLAlchemy keeps the cache
# key of a statement object it has executed, so each read skips building and keying its query.
_VIEW = _view_query(steps=False)
_VIEW_BY_ID = _view_query(steps=True).where(_RUNS.c.id == bindparam("run_id"))
_VIEW_BY_PUBLIC_ID = _view_query(steps=True).where(
    _RUNS.c.tenant_id == bindparam("tenant_id"), _RUNS.c.public_id == bindparam("public_id")
)
_STEPS_OF_RUN = (
    select(_STEP_RUNS).where(_STEP_RUNS.c.run_id == bindparam("run_id")).order_by(_STEP_RUNS.c.id)
)
_RUN_COLUMNS = len(_RUNS.c)

Reader = Session | Connection
"""Where a view is read: a request's session, or (the run read) a pooled connection."""


def _view(row: Row[Any], steps: bool) -> RunView:
    extra = row[_RUN_COLUMNS:]
    return RunView(
        cast(RunRecord, row),
        extra[0],
        extra[1],
        extra[2],
        extra[3],
        extra[4],
        (extra[5] or []) if steps else [],
    )


def run_view(reader: Reader, run_id: int) -> RunView:
    """The view of a run by its row id, with its version's steps."""
    return _view(reader.execute(_VIEW_BY_ID, {"run_id": run_id}).one(), True)


def get_run_view(reader: Reader, tenant_id: int, public_id: str) -> RunView | None:
    """The view of the tenant's run (None: no such run in this tenant), with its steps."""
    params = {"tenant_id": tenant_id, "public_id": public_id}
    row = reader.execute(_VIEW_BY_PUBLIC_ID, params).one_or_none()
    return None if row is None else _view(row, True)


def step_records(reader: Reader, run_id: int) -> list[StepRecord]:
    """A run's step attempts in the order they were recorded, as rows (not ORM objects)."""
    return cast(list[StepRecord], reader.execute(_STEPS_OF_RUN, {"run_id": run_id}).all())


def run_views(session: Session, runs: list[Run]) -> list[RunView]:
    """Views of `runs` (without steps), in their order: one query for the page."""
    if not runs:
        return []
    rows = session.execute(_VIEW.where(_RUNS.c.id.in_([r.id for r in runs])))
    by_id = {row.id: _view(row, False) for row in rows}
    return [by_id[r.id] for r in runs]
