"""Laminar with run-state recording on, for bench/overhead.py: every run has its row (as the
launcher writes it) and the worker records the run's transitions in the database (SQLite in
the embedded shape, PostgreSQL in the platform shape): the steps' attempts in the background,
the run's end by the workflow's local activity."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from pipeline_service.db.migrate import upgrade
from pipeline_service.db.pipelines import create_pipeline
from pipeline_service.db.runs import NewRun, insert_run
from pipeline_service.db.session import make_engine, session_factory, transaction
from pipeline_service.db.tenants import create_tenant
from schemas.run import RunContext, RunInput
from workflows.pipeline_run import PipelineRunWorkflow

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def database(kind: str, root: Path) -> Iterator[Engine]:
    """A migrated scratch database: a SQLite file under `root`, or a new PostgreSQL database
    (dropped afterwards)."""
    if kind == "sqlite":
        engine = make_engine(f"sqlite:///{root / 'laminar.db'}")
        upgrade(engine)
        try:
            yield engine
        finally:
            engine.dispose()
        return
    name = f"laminar_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(admin.url.set(database=name).render_as_string(hide_password=False))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def recorded_run(
    client: Client, queue: str, sessions: sessionmaker[Session], definition: Any, root: Path
) -> Callable[[], Awaitable[Any]]:
    """One run with recording on: its row is written first (as the launcher does), then the
    workflow runs and records every transition into that row."""
    with transaction(sessions) as session:
        tenant = create_tenant(session, f"bench-{uuid.uuid4().hex[:8]}", actor="bench")
        pipeline, version = create_pipeline(
            session, tenant.id, definition.name, definition.model_dump(mode="json"), actor="bench"
        )
        ids = (tenant.id, tenant.name, pipeline.id, version.id)
    now = datetime.now(UTC)

    def add_row(workflow_id: str) -> None:
        add_run_row(sessions, (ids[0], ids[2], ids[3]), workflow_id, now)

    async def run() -> Any:
        workflow_id = f"{ids[1]}/{definition.name}/{uuid.uuid4()}"
        await anyio.to_thread.run_sync(add_row, workflow_id)
        context = RunContext.manual(definition.name, workflow_id, now)
        return await client.execute_workflow(
            PipelineRunWorkflow.run,
            RunInput(pipeline=definition, context=context, source_dir=str(root), record=True),
            id=workflow_id,
            task_queue=queue,
        )

    return run


def add_run_row(
    sessions: sessionmaker[Session],
    ids: tuple[int, int, int],
    workflow_id: str,
    logical_date: datetime,
) -> None:
    """A queued manual run's first row, as the launcher writes it; `ids`: tenant, pipeline and
    version ids."""
    tenant_id, pipeline_id, version_id = ids
    with transaction(sessions) as session:
        insert_run(
            session,
            NewRun(
                tenant_id=tenant_id,
                pipeline_id=pipeline_id,
                version_id=version_id,
                workflow_id=workflow_id,
                status="QUEUED",
                trigger="manual",
                actor="bench",
                logical_date=logical_date,
                params={},
            ),
        )


def recorded_steps(sessions: sessionmaker[Session]) -> int:
    """Step attempt rows written (to check that the recording systems really recorded)."""
    with sessions() as session:
        return int(session.execute(text("SELECT count(*) FROM step_runs")).scalar_one())


__all__ = ["add_run_row", "database", "recorded_run", "recorded_steps", "session_factory"]
