"""The production worker (`build_worker`: real SQL and Python executors, DuckDB) on the real dev
server: bind parameters reach DuckDB, and cancelling a run kills its script within seconds."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError

from pipeline_service.temporal.worker import build_worker
from schemas.loading import validate_pipeline
from schemas.run import RunContext, RunInput, RunStatus, RunSummary
from steps.engines.duckdb import DuckDBEngine
from workflows.pipeline_run import PipelineRunWorkflow


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[DuckDBEngine]:
    engine = DuckDBEngine(tmp_path / "warehouse.duckdb")
    yield engine
    engine.close()


@pytest.fixture
async def queue(client: Client, engine: DuckDBEngine, tmp_path: Path) -> AsyncIterator[str]:
    name = f"real-{uuid.uuid4()}"
    async with build_worker(client, task_queue=name, engine=engine, work_root=tmp_path / "work"):
        yield name


def run_input(definition_dir: Path, data: dict, params: dict | None = None) -> RunInput:
    definition = validate_pipeline(data, source_dir=definition_dir)
    run_id = f"test/{definition.name}/{uuid.uuid4()}"
    moment = datetime(2026, 1, 31, tzinfo=UTC)
    context = RunContext.manual(definition.name, run_id, moment, params)
    return RunInput(pipeline=definition, context=context, source_dir=str(definition_dir))


async def test_sql_params_are_bound_not_spliced(
    client: Client, queue: str, engine: DuckDBEngine, tmp_path: Path
) -> None:
    hostile = "x'); DROP TABLE kept; --"
    data = {
        "name": "binds",
        "params": {"label": "plain"},
        "steps": [
            {"id": "setup", "type": "sql", "sql": "CREATE TABLE kept AS SELECT 1 AS one"},
            {
                "id": "insert",
                "type": "sql",
                "depends_on": ["setup"],
                "sql": "CREATE TABLE labels AS SELECT {{ params.label }} AS label, "
                "{{ logical_date }} AS started",
            },
        ],
    }
    run = run_input(tmp_path, data, {"label": hostile})
    summary: RunSummary = await client.execute_workflow(
        PipelineRunWorkflow.run, run, id=run.context.run_id, task_queue=queue
    )
    assert summary.status == RunStatus.SUCCEEDED
    cursor = engine.cursor()
    try:
        labels = cursor.execute("SELECT label, epoch(started) FROM labels").fetchall()
        assert labels == [(hostile, datetime(2026, 1, 31, tzinfo=UTC).timestamp())]
        assert cursor.execute("SELECT count(*) FROM kept").fetchall() == [(1,)]
    finally:
        cursor.close()


async def test_cancelling_a_run_kills_its_script(
    client: Client, queue: str, tmp_path: Path
) -> None:
    (tmp_path / "sleeper.py").write_text(
        "import os, pathlib, time\n"
        "pathlib.Path(os.environ['PID_FILE']).write_text(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    pid_file = tmp_path / "sleeper.pid"
    data = {
        "name": "cancel-me",
        "steps": [
            {
                "id": "sleep",
                "type": "python",
                "script": "sleeper.py",
                "env": {"PID_FILE": str(pid_file)},
            }
        ],
    }
    run = run_input(tmp_path, data)
    handle = await client.start_workflow(
        PipelineRunWorkflow.run, run, id=run.context.run_id, task_queue=queue
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    pid = int(pid_file.read_text())
    # After the first heartbeat, later ones are throttled: the SDK's default would hold them
    # (and the cancellation they fetch) for up to 80% of the 30 s heartbeat timeout.
    await asyncio.sleep(6)
    began = time.monotonic()
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    while _alive(pid) and time.monotonic() - began < 20:
        await asyncio.sleep(0.2)
    assert not _alive(pid)
    # default heartbeat timeout is 30 s; the cancellation still reached the script in seconds
    assert time.monotonic() - began < 12


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


async def test_python_outputs_hand_a_table_and_a_result_to_a_later_sql_step(
    client: Client, queue: str, engine: DuckDBEngine, tmp_path: Path
) -> None:
    (tmp_path / "extract.py").write_text(
        "import json, os\n"
        "ctx = json.load(open(os.environ['LAMINAR_CONTEXT']))\n"
        "with open(ctx['outputs']['städte'], 'w') as f:\n"
        "    f.write('name,people\\nWien,2\\nGraz,1\\n')\n"
        "json.dump({'count': 2}, open(os.environ['LAMINAR_RESULT'], 'w'))\n"
    )
    data = {
        "name": "handoff",
        "steps": [
            {"id": "other", "type": "sql", "sql": "SELECT 1"},
            {
                "id": "extract",
                "type": "python",
                "script": "extract.py",
                "outputs": {"städte": "cities.csv"},
            },
            {
                "id": "report",
                "type": "sql",
                "depends_on": ["extract", "other"],
                "sql": "CREATE TABLE report AS SELECT count(*) = {{ steps.extract.result.count }}"
                " AS complete, sum(people) AS people FROM {{ steps.extract.outputs['städte'] }}",
            },
        ],
    }
    run = run_input(tmp_path, data)
    handle = await client.start_workflow(
        PipelineRunWorkflow.run, run, id=run.context.run_id, task_queue=queue
    )
    summary: RunSummary = await handle.result()
    assert summary.status == RunStatus.SUCCEEDED, summary
    cursor = engine.cursor()
    try:
        assert cursor.execute("SELECT * FROM report").fetchall() == [(True, 3)]
    finally:
        cursor.close()
    # Only the referenced upstream result travels with the activity input.
    inputs = [
        event.activity_task_scheduled_event_attributes.input.payloads[0].data
        async for event in handle.fetch_history_events()
        if event.activity_task_scheduled_event_attributes.activity_id == "report"
    ]
    assert len(inputs) == 1
    document = json.loads(inputs[0])
    assert set(document["upstream"]) == {"extract"}
    assert document["upstream"]["extract"] == {
        "result": {"count": 2},
        "tables": {"städte": "städte"},
    }


@pytest.mark.slow
async def test_a_spark_step_gets_an_upstream_result_in_its_args(
    client: Client, queue: str, tmp_path: Path
) -> None:
    """Real spark-submit (local, the pyspark package's Spark): the arg rendered from the
    upstream python step's result reaches the application."""
    (tmp_path / "count.py").write_text(
        "import json, os\n"
        "json.dump({'day': '2026-01-30'}, open(os.environ['LAMINAR_RESULT'], 'w'))\n"
    )
    out = tmp_path / "seen.txt"
    (tmp_path / "app.py").write_text(
        "import sys\nopen(sys.argv[1], 'w').write(sys.argv[2])\n"  # no session: a quick driver
    )
    data = {
        "name": "spark-handoff",
        "steps": [
            {"id": "count", "type": "python", "script": "count.py"},
            {
                "id": "app",
                "type": "spark",
                "depends_on": ["count"],
                "application": "app.py",
                "args": [str(out), "{{ steps.count.result.day }}"],
                "driver_memory": "512m",
            },
        ],
    }
    run = run_input(tmp_path, data)
    summary: RunSummary = await client.execute_workflow(
        PipelineRunWorkflow.run, run, id=run.context.run_id, task_queue=queue
    )
    assert summary.status == RunStatus.SUCCEEDED, summary
    assert out.read_text() == "2026-01-30"
