"""Sensor steps on the real dev server with the real executors: the workflow checks (one short
activity per check) and sleeps on a durable timer between checks until the condition holds or
the sensor times out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError

from pipeline_service.temporal.worker import build_worker
from schemas.run import RunStatus, RunSummary, StepStatus
from steps.engines.duckdb import DuckDBEngine
from tests.integration.test_real_steps import run_input
from workflows.pipeline_run import PipelineRunWorkflow


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[DuckDBEngine]:
    engine = DuckDBEngine(tmp_path / "warehouse.duckdb")
    yield engine
    engine.close()


@pytest.fixture
async def queue(client: Client, engine: DuckDBEngine, tmp_path: Path) -> AsyncIterator[str]:
    name = f"sensors-{uuid.uuid4()}"
    async with build_worker(client, task_queue=name, engine=engine, work_root=tmp_path / "work"):
        yield name


def _statuses(summary: RunSummary) -> dict[str, StepStatus]:
    return {s.step_id: s.status for s in summary.steps}


async def test_file_sensor_succeeds_when_the_file_appears_mid_wait(
    client: Client, queue: str, tmp_path: Path
) -> None:
    data = {
        "name": "files",
        "steps": [
            {
                "id": "wait",
                "type": "sensor",
                "file": "incoming/{{ ds }}.csv",
                "poke_interval": "1s",
                "timeout": "60s",
            },
            {"id": "after", "type": "noop", "depends_on": ["wait"]},
        ],
    }
    run = run_input(tmp_path, data)
    handle = await client.start_workflow(
        PipelineRunWorkflow.run, run, id=run.context.run_id, task_queue=queue
    )
    await asyncio.sleep(2.5)
    state = await handle.query(PipelineRunWorkflow.state)
    assert {s.step_id: s.status for s in state.steps}["wait"] == StepStatus.RUNNING
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "2026-01-31.csv").write_text("a\n1\n")
    summary: RunSummary = await handle.result()
    assert summary.status == RunStatus.SUCCEEDED
    assert _statuses(summary) == {"wait": StepStatus.SUCCEEDED, "after": StepStatus.SUCCEEDED}
    outputs = summary.step("wait").result.outputs  # type: ignore[union-attr]
    assert outputs["met"] is True and outputs["file"] == "incoming/2026-01-31.csv"
    assert outputs["checks"] >= 2 and outputs["waited_seconds"] >= 2
    # Reschedule mode: one short activity per check, a workflow timer between checks.
    history = await handle.fetch_history()
    checks = [
        e.activity_task_scheduled_event_attributes.activity_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_id.startswith("wait#check")
    ]
    timers = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
    assert len(checks) == outputs["checks"] and len(timers) == len(checks) - 1


async def test_sql_sensor_waits_for_a_query_to_return_true(
    client: Client, queue: str, engine: DuckDBEngine, tmp_path: Path
) -> None:
    cursor = engine.cursor()
    try:
        cursor.execute("CREATE TABLE loads (day DATE)")
    finally:
        cursor.close()
    data = {
        "name": "loads",
        "steps": [
            {
                "id": "loaded",
                "type": "sensor",
                "sql": "SELECT count(*) > 0 FROM loads WHERE day = CAST({{ ds }} AS DATE)",
                "poke_interval": "1s",
                "timeout": "60s",
            },
            {
                "id": "use",
                "type": "sql",
                "depends_on": ["loaded"],
                "sql": "CREATE TABLE used AS SELECT * FROM loads",
            },
        ],
    }
    run = run_input(tmp_path, data)
    handle = await client.start_workflow(
        PipelineRunWorkflow.run, run, id=run.context.run_id, task_queue=queue
    )
    await asyncio.sleep(2.5)
    cursor = engine.cursor()
    try:
        cursor.execute("INSERT INTO loads VALUES ('2026-01-30')")  # another day: still false
    finally:
        cursor.close()
    await asyncio.sleep(1.5)
    state = await handle.query(PipelineRunWorkflow.state)
    assert {s.step_id: s.status for s in state.steps}["loaded"] == StepStatus.RUNNING
    cursor = engine.cursor()
    try:
        cursor.execute("INSERT INTO loads VALUES ('2026-01-31')")
    finally:
        cursor.close()
    summary: RunSummary = await handle.result()
    assert summary.status == RunStatus.SUCCEEDED
    outputs = summary.step("loaded").result.outputs  # type: ignore[union-attr]
    assert outputs["met"] is True and outputs["value"] is True and outputs["checks"] >= 3
    cursor = engine.cursor()
    try:
        assert cursor.execute("SELECT count(*) FROM used").fetchall() == [(2,)]
    finally:
        cursor.close()


async def test_sensor_timeout_fails_the_step_with_what_it_waited_for(
    client: Client, queue: str, tmp_path: Path
) -> None:
    data = {
        "name": "late",
        "steps": [
            {
                "id": "wait",
                "type": "sensor",
                "file": "never.csv",
                "poke_interval": "1s",
                "timeout": "3s",
            },
            {"id": "after", "type": "noop", "depends_on": ["wait"]},
        ],
    }
    run = run_input(tmp_path, data)
    with pytest.raises(WorkflowFailureError) as failure:
        await client.execute_workflow(
            PipelineRunWorkflow.run, run, id=run.context.run_id, task_queue=queue
        )
    summary = RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]
    assert _statuses(summary) == {"wait": StepStatus.FAILED, "after": StepStatus.SKIPPED}
    wait = summary.step("wait")
    assert wait.error_type == "SensorTimeout"
    assert wait.error is not None
    assert wait.error.startswith("sensor timed out after ")
    assert "(timeout 3s, " in wait.error and "checks every 1s)" in wait.error
    assert wait.error.endswith("waiting for file 'never.csv' to appear in the pipeline directory")
