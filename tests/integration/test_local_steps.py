"""Local steps (`local: true`, noop's default) on a real dev server: they run as local
activities (no activity events in the history, one marker per attempt series), and keep
retries and timeouts; regular and local steps mix in one DAG."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from schemas.run import RunStatus, RunSummary
from tests.integration.scripted import (
    Behavior,
    ScriptedExecutor,
    pipeline,
    run_input,
    worker_for,
)
from workflows.pipeline_run import LOCAL_STEPS_PATCH, PipelineRunWorkflow


@pytest.fixture
async def local_run(client: Client, tmp_path: Path) -> AsyncIterator[tuple[ScriptedExecutor, str]]:
    executor = ScriptedExecutor()
    queue = f"local-{uuid.uuid4()}"
    async with worker_for(client, executor, tmp_path, queue):
        yield executor, queue


async def run(client: Client, queue: str, steps: list[dict[str, object]]) -> WorkflowHandle:
    run_id = f"test/{uuid.uuid4()}"
    handle: WorkflowHandle = await client.start_workflow(
        PipelineRunWorkflow.run,
        run_input(pipeline(steps), run_id),
        id=run_id,
        task_queue=queue,
        result_type=RunSummary,
    )
    return handle


async def event_types(handle: WorkflowHandle) -> list[EventType.ValueType]:
    return [event.event_type for event in (await handle.fetch_history()).events]


async def test_local_and_regular_steps_mix(
    client: Client, local_run: tuple[ScriptedExecutor, str]
) -> None:
    executor, queue = local_run
    handle = await run(
        client,
        queue,
        [
            {"id": "join", "local": True},
            {"id": "regular", "depends_on": ["join"]},
            {"id": "tail", "depends_on": ["regular"], "local": True},
        ],
    )
    summary = await handle.result()
    assert summary.status == RunStatus.SUCCEEDED
    assert [call[0] for call in executor.calls] == ["join", "regular", "tail"]
    events = await event_types(handle)
    # Only `regular` went through the server's activity queue; the local ones left markers
    # (the four patch markers: control flow, workflow-driven retries, step-started-at and
    # local steps; then one per local step).
    assert events.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1
    assert events.count(EventType.EVENT_TYPE_MARKER_RECORDED) == 6
    history = await handle.fetch_history()
    patch_markers = [
        e for e in history.events if e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    assert len(patch_markers) == 4
    assert any(
        LOCAL_STEPS_PATCH.encode() in marker.marker_recorded_event_attributes.SerializeToString()
        for marker in patch_markers
    )


async def test_local_step_retries(client: Client, local_run: tuple[ScriptedExecutor, str]) -> None:
    executor, queue = local_run
    executor.behaviors["flaky"] = Behavior(fail_times=2)
    handle = await run(
        client,
        queue,
        [{"id": "flaky", "local": True, "retry": {"max_attempts": 3, "initial_interval": 0.2}}],
    )
    summary = await handle.result()
    assert summary.status == RunStatus.SUCCEEDED
    assert executor.calls == [("flaky", 1), ("flaky", 2), ("flaky", 3)]
    assert summary.step("flaky").attempt == 3


async def test_local_step_runs_out_of_retries(
    client: Client, local_run: tuple[ScriptedExecutor, str]
) -> None:
    executor, queue = local_run
    executor.behaviors["flaky"] = Behavior(fail_times=9)
    handle = await run(
        client,
        queue,
        [{"id": "flaky", "local": True, "retry": {"max_attempts": 2, "initial_interval": 0.1}}],
    )
    summary = await handle.query(PipelineRunWorkflow.state)
    while summary.status == RunStatus.RUNNING:
        summary = await handle.query(PipelineRunWorkflow.state)
    assert summary.status == RunStatus.FAILED
    assert executor.calls == [("flaky", 1), ("flaky", 2)]
    assert "scripted failure 2" in (summary.step("flaky").error or "")


async def test_local_step_timeout(client: Client, local_run: tuple[ScriptedExecutor, str]) -> None:
    executor, queue = local_run
    executor.behaviors["slow"] = Behavior(sleep=5)
    handle = await run(
        client,
        queue,
        [
            {
                "id": "slow",
                "local": True,
                "timeout": "500ms",
                "retry": {"max_attempts": 2, "initial_interval": 0.1},
            }
        ],
    )
    summary = await handle.query(PipelineRunWorkflow.state)
    while summary.status == RunStatus.RUNNING:
        summary = await handle.query(PipelineRunWorkflow.state)
    assert summary.status == RunStatus.FAILED
    assert "timed out" in (summary.step("slow").error or "")
    assert [call[0] for call in executor.calls] == ["slow", "slow"]  # both attempts timed out


async def test_failing_local_compensation_is_recorded(
    client: Client, local_run: tuple[ScriptedExecutor, str]
) -> None:
    """A local activity's final failure arrives as its cause (not an ActivityError): a local
    compensation that fails must still end COMPENSATION_FAILED, not fail the workflow task."""
    executor, queue = local_run
    executor.behaviors["boom"] = Behavior(fail_times=9, retryable=False)
    executor.behaviors["undo_a"] = Behavior(fail_times=9, retryable=False)
    run_id = f"test/{uuid.uuid4()}"
    handle: WorkflowHandle = await client.start_workflow(
        PipelineRunWorkflow.run,
        run_input(
            pipeline(
                [
                    {"id": "a", "compensate": {"id": "undo_a", "type": "noop", "local": True}},
                    {"id": "boom", "depends_on": ["a"]},
                ],
                on_failure="compensate",
            ),
            run_id,
        ),
        id=run_id,
        task_queue=queue,
        result_type=RunSummary,
    )
    async with asyncio.timeout(20):  # before the fix the workflow task failed forever
        summary = await handle.query(PipelineRunWorkflow.state)
        while summary.status == RunStatus.RUNNING:
            summary = await handle.query(PipelineRunWorkflow.state)
    assert summary.status == RunStatus.FAILED
    assert summary.step("a").status == "COMPENSATION_FAILED"
    assert "scripted failure" in (summary.step("a").error or "")
