"""The dispatcher's repair of stalled submissions: a run whose slot was taken long ago and
whose workflow never recorded its start gets its workflow started; one it has started is not
rebuilt and started again on every pass; the passes page through any number of stalled runs.
Its own SQLite database (the service tests' dispatcher repairs the shared one) and a task
queue without a worker, so the runs stay QUEUED as behind busy or absent workers."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from pipeline_service import dispatcher as dispatching
from pipeline_service.db.base import utcnow
from pipeline_service.db.migrate import upgrade
from pipeline_service.db.runs import insert_run
from pipeline_service.db.session import make_engine, session_factory, transaction
from pipeline_service.dispatcher import STALLED_AFTER, RunDispatcher
from tests.integration.records import new_run, tenant_with_pipeline


async def test_repair_starts_stalled_runs_once_and_pages_through_them(
    client: Client, tmp_path: Path, examples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'laminar.db'}")
    upgrade(engine)
    sessions = session_factory(engine)
    stalled_since = utcnow() - STALLED_AFTER * 2
    with transaction(sessions) as session:
        tenant, pipeline, version = tenant_with_pipeline(session)
        workflow_ids = []
        for _ in range(3):
            new = new_run(tenant, pipeline, version, uuid.uuid4().hex)
            run, _ = insert_run(session, dataclasses.replace(new, submitted_at=stalled_since))
            workflow_ids.append(run.workflow_id)

    async def temporal() -> Client:
        return client

    repairer = RunDispatcher(
        sessions, temporal, task_queue=f"no-worker-{uuid.uuid4()}", source_dir=examples_dir
    )
    monkeypatch.setattr(dispatching, "REPAIR_PAGE", 2)
    try:
        assert await repairer.repair_stalled() == 2  # the first page
        assert await repairer.repair_stalled() == 1  # the rest
        for workflow_id in workflow_ids:  # every one started, waiting for a worker
            description = await client.get_workflow_handle(workflow_id).describe()
            assert description.status is not None
        # Still QUEUED (no worker took them): looked at again, not started again.
        assert await repairer.repair_stalled() == 0
        assert await repairer.repair_stalled() == 0
        # A dispatcher that has not started them (another process) starts each once.
        other = RunDispatcher(
            sessions, temporal, task_queue=repairer.task_queue, source_dir=examples_dir
        )
        assert await other.repair_stalled() + await other.repair_stalled() == 3
    finally:
        for workflow_id in workflow_ids:
            await client.get_workflow_handle(workflow_id).terminate("test over")
        engine.dispose()
