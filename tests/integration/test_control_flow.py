"""Control flow on the real dev server (scripted steps, see scripted.py): fail_fast, per-step
`on_failure: ignore`, trigger rules and `when:` conditions."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from temporalio.client import WorkflowFailureError

from schemas.run import RunStatus, RunSummary, StepStatus
from tests.integration.scripted import Behavior, pipeline, run_input
from tests.integration.test_pipeline_run import Harness, harness
from workflows.pipeline_run import PipelineRunWorkflow

__all__ = ["harness"]  # the fixture


async def failed_summary(harness: Harness, definition: object) -> RunSummary:
    with pytest.raises(WorkflowFailureError) as failure:
        await harness.run(definition)
    return RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]


def statuses(summary: RunSummary) -> dict[str, StepStatus]:
    return {s.step_id: s.status for s in summary.steps}


async def test_fail_fast_cancels_running_siblings_and_skips_the_rest(harness: Harness) -> None:
    harness.executor.behaviors["bad"] = Behavior(sleep=0.3, fail_times=9, retryable=False)
    harness.executor.behaviors["slow"] = Behavior(sleep=60)
    definition = pipeline(
        [
            {"id": "bad"},
            {"id": "slow", "heartbeat_timeout": "1s"},
            {"id": "after_slow", "depends_on": ["slow"]},
            {"id": "cleanup", "depends_on": ["bad", "slow"], "trigger_rule": "all_done"},
            {"id": "alert", "depends_on": ["bad"], "trigger_rule": "one_failed"},
        ],
        on_failure="fail_fast",
    )
    began = time.monotonic()
    summary = await failed_summary(harness, definition)
    assert time.monotonic() - began < 15  # not the slow step's 60 s
    assert statuses(summary) == {
        "bad": StepStatus.FAILED,
        "slow": StepStatus.CANCELLED,
        "after_slow": StepStatus.SKIPPED,
        "cleanup": StepStatus.SUCCEEDED,
        "alert": StepStatus.SUCCEEDED,
    }
    assert summary.step("slow").error == "cancelled: the run failed fast (step 'bad' failed)"
    assert summary.step("after_slow").error == "the run failed fast: step 'bad' failed"
    assert summary.error is not None and "step 'bad' failed" in summary.error
    await asyncio.sleep(1.5)  # the activity saw the cancel: its sleep never finished
    assert "slow" not in harness.executor.intervals


async def test_continue_lets_an_independent_branch_finish(harness: Harness) -> None:
    harness.executor.behaviors["bad"] = Behavior(fail_times=9, retryable=False)
    harness.executor.behaviors["side"] = Behavior(sleep=0.5)
    definition = pipeline(
        [{"id": "bad"}, {"id": "side"}, {"id": "after", "depends_on": ["bad"]}],
        on_failure="continue",
    )
    summary = await failed_summary(harness, definition)
    assert statuses(summary) == {
        "bad": StepStatus.FAILED,
        "side": StepStatus.SUCCEEDED,
        "after": StepStatus.SKIPPED,
    }
    assert summary.step("after").error == "upstream step 'bad' failed"


async def test_an_ignored_failure_lets_the_run_succeed(harness: Harness) -> None:
    harness.executor.behaviors["optional"] = Behavior(fail_times=9, retryable=False)
    definition = pipeline(
        [
            {"id": "optional", "on_failure": "ignore"},
            {"id": "next", "depends_on": ["optional"]},
            {"id": "alert", "depends_on": ["optional"], "trigger_rule": "one_failed"},
        ]
    )
    summary = await harness.run(definition)
    assert summary.status == RunStatus.SUCCEEDED
    optional = summary.step("optional")
    assert optional.status == StepStatus.FAILED and optional.failure_ignored
    assert optional.error == "scripted failure 1 (ignored: on_failure: ignore)"
    assert summary.step("next").status == StepStatus.SUCCEEDED
    # to its dependants the ignored failure is a success: one_failed does not fire
    assert summary.step("alert").status == StepStatus.SKIPPED
    assert summary.step("alert").error == (
        "trigger rule one_failed cannot hold: upstream 'optional' succeeded"
    )


async def test_trigger_rules_after_a_failure(harness: Harness) -> None:
    harness.executor.behaviors["bad"] = Behavior(fail_times=9, retryable=False)
    definition = pipeline(
        [
            {"id": "good"},
            {"id": "bad"},
            {"id": "notify", "depends_on": ["good", "bad"], "trigger_rule": "one_failed"},
            {"id": "cleanup", "depends_on": ["good", "bad"], "trigger_rule": "all_done"},
            {"id": "report", "depends_on": ["good", "bad"], "trigger_rule": "none_failed"},
            {"id": "partial", "depends_on": ["good", "bad"], "trigger_rule": "one_success"},
            {"id": "chained", "depends_on": ["report"]},
            {"id": "after_skip", "depends_on": ["report"], "trigger_rule": "none_failed"},
        ]
    )
    summary = await failed_summary(harness, definition)
    assert statuses(summary) == {
        "good": StepStatus.SUCCEEDED,
        "bad": StepStatus.FAILED,
        "notify": StepStatus.SUCCEEDED,
        "cleanup": StepStatus.SUCCEEDED,
        "report": StepStatus.SKIPPED,
        "partial": StepStatus.SUCCEEDED,
        "chained": StepStatus.SKIPPED,
        "after_skip": StepStatus.SUCCEEDED,
    }
    # decided as soon as `bad` failed, whether or not `good` had finished by then
    assert summary.step("report").error in (
        "trigger rule none_failed cannot hold: upstream 'bad' failed",
        "trigger rule none_failed cannot hold: upstream 'good' succeeded, 'bad' failed",
    )
    assert summary.step("chained").error == "upstream step 'report' skipped"


async def test_when_skips_a_step_with_the_reason(harness: Harness) -> None:
    definition = pipeline(
        [
            {"id": "a"},
            {"id": "eu_only", "depends_on": ["a"], "when": "{{ params.region == 'EU' }}"},
            {"id": "big", "depends_on": ["a"], "when": "{{ steps.a.result.attempt >= 1 }}"},
            {"id": "after", "depends_on": ["eu_only"]},
        ],
        params={"region": "EU"},
    )
    run = run_input(definition, f"test/{uuid.uuid4()}")
    run.context = run.context.model_copy(update={"params": {"region": "US"}})
    summary = await harness.client.execute_workflow(
        PipelineRunWorkflow.run, run, id=run.context.run_id, task_queue=harness.task_queue
    )
    assert summary.status == RunStatus.SUCCEEDED
    assert statuses(summary) == {
        "a": StepStatus.SUCCEEDED,
        "eu_only": StepStatus.SKIPPED,
        "big": StepStatus.SUCCEEDED,
        "after": StepStatus.SKIPPED,
    }
    assert summary.step("eu_only").error == (
        "condition false: when {{ params.region == 'EU' }} rendered 'False'"
    )
    assert summary.step("after").error == "upstream step 'eu_only' skipped"
    assert [c[0] for c in harness.executor.calls] == ["a", "big"]


async def test_a_when_that_cannot_render_fails_its_step(harness: Harness) -> None:
    definition = pipeline(
        [{"id": "a"}, {"id": "b", "depends_on": ["a"], "when": "{{ steps.a.result.missing }}"}]
    )
    summary = await failed_summary(harness, definition)
    assert summary.step("b").status == StepStatus.FAILED
    assert summary.step("b").error_type == "ConditionError"
    assert (
        summary.step("b").error == "when: template error: 'dict object' has no attribute 'missing'"
    )
    assert [c[0] for c in harness.executor.calls] == ["a"]


async def test_a_failed_when_fails_fast_too(harness: Harness) -> None:
    harness.executor.behaviors["slow"] = Behavior(sleep=60)
    definition = pipeline(
        [
            {"id": "x"},
            {"id": "a", "depends_on": ["x"], "when": "{{ steps.x.result.missing }}"},
            {"id": "slow", "heartbeat_timeout": "1s"},
            {"id": "alert", "depends_on": ["a"], "trigger_rule": "one_failed"},
        ],
        on_failure="fail_fast",
    )
    began = time.monotonic()
    summary = await failed_summary(harness, definition)
    assert time.monotonic() - began < 15
    assert statuses(summary) == {
        "x": StepStatus.SUCCEEDED,
        "a": StepStatus.FAILED,
        "slow": StepStatus.CANCELLED,
        "alert": StepStatus.SUCCEEDED,
    }
