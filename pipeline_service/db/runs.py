"""Runs and step attempts, always within one tenant. Rows change only through the launcher
(a run's first row) and `record_run_event` (everything after)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from pipeline_service.db.models import Pipeline, PipelineVersion, Run, StepRun, Tenant


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


@dataclass(frozen=True)
class RunView:
    """A run with what its API answer names: pipeline, version number, the runs it retries or
    replays, its tenant and (for the detail view) its version's step list. Read in one query."""

    run: Run
    pipeline: str
    version: int
    retry_of: str | None
    replay_of: str | None
    tenant: str
    steps: list[dict[str, Any]]


def _view_query(*, steps: bool) -> Select[Any]:
    retried, replayed = aliased(Run, name="retried"), aliased(Run, name="replayed")
    columns: list[Any] = [
        Run,
        Pipeline.name,
        PipelineVersion.version,
        retried.public_id,
        replayed.public_id,
        Tenant.name,
    ]
    if steps:
        columns.append(PipelineVersion.definition["steps"])
    return (
        select(*columns)
        .join(Pipeline, Pipeline.id == Run.pipeline_id)
        .join(PipelineVersion, PipelineVersion.id == Run.version_id)
        .join(Tenant, Tenant.id == Run.tenant_id)
        .outerjoin(retried, retried.id == Run.retry_of_id)
        .outerjoin(replayed, replayed.id == Run.replay_of_id)
    )


# Built once: statements are immutable, and building one (its two aliases of `runs` copy every
# column with its foreign keys and event listeners) took half the CPU of a run read.
_VIEW_WITH_STEPS = _view_query(steps=True)
_VIEW = _view_query(steps=False)


def _view(row: Any, steps: bool) -> RunView:
    return RunView(row[0], row[1], row[2], row[3], row[4], row[5], (row[6] or []) if steps else [])


def run_view(session: Session, run_id: int) -> RunView:
    """The view of a run by its row id, with its version's steps."""
    row = session.execute(_VIEW_WITH_STEPS.where(Run.id == run_id)).one()
    return _view(row, True)


def get_run_view(session: Session, tenant_id: int, public_id: str) -> RunView | None:
    """The view of the tenant's run (None: no such run in this tenant), with its steps."""
    query = _VIEW_WITH_STEPS.where(Run.tenant_id == tenant_id, Run.public_id == public_id)
    row = session.execute(query).one_or_none()
    return None if row is None else _view(row, True)


def run_views(session: Session, runs: list[Run]) -> list[RunView]:
    """Views of `runs` (without steps), in their order: one query for the page."""
    if not runs:
        return []
    rows = session.execute(_VIEW.where(Run.id.in_([r.id for r in runs])))
    by_id = {row[0].id: _view(row, False) for row in rows}
    return [by_id[r.id] for r in runs]
