"""A step's own clock spans its retries: every attempt learns from the workflow when the step's
first attempt started (what a streaming Flink step's `until` counts from), and when Temporal
stops waiting for the attempt (what stopping it must fit in). Real dev server and worker, the
scripted executor standing in for a step's work."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import Client

from tests.integration.scripted import (
    Behavior,
    ScriptedExecutor,
    pipeline,
    run_input,
    worker_for,
)
from workflows.pipeline_run import STOP_GRACE, PipelineRunWorkflow


async def test_every_attempt_gets_the_steps_first_start_and_its_own_deadline(
    client: Client, tmp_path: Path
) -> None:
    executor = ScriptedExecutor(behaviors={"flaky": Behavior(fail_times=2)})
    definition = pipeline(
        [{"id": "flaky", "timeout": "1m", "retry": {"max_attempts": 3, "initial_interval": 1}}]
    )
    queue = f"clock-{uuid.uuid4()}"
    before = datetime.now(UTC)
    async with worker_for(client, executor, tmp_path, queue):
        await client.execute_workflow(
            PipelineRunWorkflow.run,
            run_input(definition, f"test/clock/{uuid.uuid4()}"),
            id=f"clock-{uuid.uuid4()}",
            task_queue=queue,
        )
    first, second, third = executor.contexts
    assert [c.attempt for c in executor.contexts] == [1, 2, 3]
    started = first.step_started_at
    assert started is not None and started.tzinfo is not None
    # The same start for every attempt: the first one's, from the workflow's clock.
    assert second.step_started_at == third.step_started_at == started
    assert before - timedelta(seconds=5) <= started <= datetime.now(UTC)
    # Each attempt's own deadline: its start plus the step's timeout and the stop grace; the
    # later attempts started after the backoff (1 s, then 2 s), so their deadlines are later.
    deadlines = [c.attempt_deadline for c in executor.contexts]
    assert all(d is not None for d in deadlines)
    limit = timedelta(minutes=1) + STOP_GRACE
    assert deadlines[0] is not None and started + limit - timedelta(seconds=5) <= deadlines[0]
    assert deadlines[0] <= started + limit + timedelta(seconds=5)
    assert deadlines[1] is not None and deadlines[1] >= deadlines[0] + timedelta(seconds=1)
    assert deadlines[2] is not None and deadlines[2] >= deadlines[1] + timedelta(seconds=2)
