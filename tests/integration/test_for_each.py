"""`for_each` fan-out on the real dev server (scripted steps, see scripted.py): a list param, an
upstream result, max_parallel, retried and failed instances, results in item order, an empty
list, the instances' recorded rows, and the history size of 1,000 items."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError

from pipeline_service.db.models import Run, StepRun
from pipeline_service.db.runs import insert_run
from pipeline_service.db.session import transaction
from schemas.run import RunContext, RunInput, RunStatus, RunSummary, StepStatus
from tests.integration.records import new_run, tenant_with_pipeline
from tests.integration.scripted import Behavior, ScriptedExecutor, pipeline, worker_for
from tests.integration.test_pipeline_run import Harness, harness
from workflows.pipeline_run import PipelineRunWorkflow

__all__ = ["harness"]  # the fixture

REGIONS = {"type": "list", "default": ["eu"]}


def with_params(definition: Any, **params: Any) -> RunInput:
    context = RunContext.manual(
        definition.name, f"test/{uuid.uuid4()}", datetime(2026, 1, 31, tzinfo=UTC), params
    )
    return RunInput(pipeline=definition, context=context, source_dir=".")


async def run(harness: Harness, run_input: RunInput) -> RunSummary:
    result: RunSummary = await harness.client.execute_workflow(
        PipelineRunWorkflow.run,
        run_input,
        id=run_input.context.run_id,
        task_queue=harness.task_queue,
    )
    return result


async def run_failing(harness: Harness, run_input: RunInput) -> RunSummary:
    with pytest.raises(WorkflowFailureError) as failure:
        await run(harness, run_input)
    return RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]


def fan_pipeline(**fan: Any) -> Any:
    return pipeline(
        [
            {"id": "fan", "for_each": "{{ params.regions }}", **fan},
            {"id": "after", "depends_on": ["fan"]},
        ],
        params={"regions": REGIONS},
    )


async def test_a_list_param_fans_out_and_downstream_reads_results_in_item_order(
    harness: Harness,
) -> None:
    regions = ["eu", "us", "apac", "latam", "mea"]
    # Later items finish first: the results still come in item order.
    for i in range(5):
        harness.executor.behaviors[f"fan[{i}]"] = Behavior(sleep=0.1 * (5 - i))
    summary = await run(harness, with_params(fan_pipeline(max_parallel=5), regions=regions))
    assert summary.status == RunStatus.SUCCEEDED
    fan = summary.step("fan")
    assert fan.status == StepStatus.SUCCEEDED and fan.result is not None
    assert fan.result.outputs["count"] == 5
    assert [r["item"] for r in fan.result.outputs["results"]] == regions
    assert [r["index"] for r in fan.result.outputs["results"]] == [0, 1, 2, 3, 4]
    instances = [s for s in summary.steps if s.step_id.startswith("fan[")]
    assert [s.step_id for s in instances] == [f"fan[{i}]" for i in range(5)]
    assert all(s.status == StepStatus.SUCCEEDED for s in instances)
    # Instances are listed right after their step, before the downstream one.
    ids = [s.step_id for s in summary.steps]
    assert ids.index("after") > ids.index("fan[4]") > ids.index("fan")
    after = harness.executor.intervals["after"]
    assert all(after[0] >= harness.executor.intervals[f"fan[{i}]"][1] for i in range(5))


async def test_an_upstream_result_fans_out(harness: Harness) -> None:
    # The scripted `list` step returns {"attempt": 1}; a list under its result would be read
    # the same way: here the list comes from a Jinja expression over it.
    definition = pipeline(
        [
            {"id": "list"},
            {
                "id": "fan",
                "depends_on": ["list"],
                "for_each": "{{ range(steps.list.result.attempt + 2) | list }}",
            },
        ]
    )
    summary = await harness.run(definition)
    fan = summary.step("fan")
    assert fan.result is not None
    assert [r["item"] for r in fan.result.outputs["results"]] == [0, 1, 2]


async def test_max_parallel_bounds_running_instances(harness: Harness) -> None:
    for i in range(6):
        harness.executor.behaviors[f"fan[{i}]"] = Behavior(sleep=0.4)
    summary = await run(harness, with_params(fan_pipeline(max_parallel=2), regions=list("abcdef")))
    assert summary.status == RunStatus.SUCCEEDED
    intervals = [harness.executor.intervals[f"fan[{i}]"] for i in range(6)]
    # Sample the number of instances running at each instance's start: never above 2.
    for start, _ in intervals:
        running = sum(1 for s, e in intervals if s <= start < e)
        assert running <= 2
    assert max(sum(1 for s, e in intervals if s <= start < e) for start, _ in intervals) == 2


async def test_an_instance_is_retried_then_succeeds(harness: Harness) -> None:
    harness.executor.behaviors["fan[1]"] = Behavior(fail_times=2)
    definition = fan_pipeline(retry={"max_attempts": 3, "initial_interval": 0.1})
    summary = await run(harness, with_params(definition, regions=["a", "b", "c"]))
    assert summary.status == RunStatus.SUCCEEDED
    assert summary.step("fan[1]").attempt == 3
    assert summary.step("fan[0]").attempt == 1
    assert [a for s, a in harness.executor.calls if s == "fan[1]"] == [1, 2, 3]


async def test_a_failed_instance_fails_the_step_and_skips_downstream(harness: Harness) -> None:
    harness.executor.behaviors["fan[1]"] = Behavior(fail_times=9, retryable=False)
    summary = await run_failing(harness, with_params(fan_pipeline(), regions=["a", "b", "c"]))
    assert summary.status == RunStatus.FAILED
    assert summary.step("fan[1]").status == StepStatus.FAILED
    # under on_failure: continue, the other instances finish
    assert summary.step("fan[0]").status == StepStatus.SUCCEEDED
    assert summary.step("fan[2]").status == StepStatus.SUCCEEDED
    fan = summary.step("fan")
    assert fan.status == StepStatus.FAILED and fan.error_type == "ForEachFailed"
    assert fan.error == (
        "1 of 3 instances of 'fan' did not succeed (first: fan[1] failed: scripted failure 1)"
    )
    assert summary.step("after").status == StepStatus.SKIPPED


async def test_an_ignored_instance_failure_lets_downstream_run(harness: Harness) -> None:
    harness.executor.behaviors["fan[0]"] = Behavior(fail_times=9, retryable=False)
    definition = fan_pipeline(on_failure="ignore")
    summary = await run(harness, with_params(definition, regions=["a", "b"]))
    assert summary.status == RunStatus.SUCCEEDED
    assert summary.step("fan").failure_ignored
    assert summary.step("after").status == StepStatus.SUCCEEDED


async def test_fail_fast_cancels_the_other_instances(harness: Harness) -> None:
    harness.executor.behaviors["fan[0]"] = Behavior(sleep=0.2, fail_times=9, retryable=False)
    for i in (1, 2):
        harness.executor.behaviors[f"fan[{i}]"] = Behavior(sleep=60)
    definition = pipeline(
        [
            {"id": "fan", "for_each": "{{ params.regions }}", "max_parallel": 3,
             "heartbeat_timeout": "1s"},
            {"id": "after", "depends_on": ["fan"]},
        ],
        params={"regions": REGIONS},
        on_failure="fail_fast",
    )  # fmt: skip
    summary = await run_failing(harness, with_params(definition, regions=list("abcd")))
    assert summary.step("fan[0]").status == StepStatus.FAILED
    assert summary.step("fan[1]").status == StepStatus.CANCELLED
    assert summary.step("fan[2]").status == StepStatus.CANCELLED
    assert summary.step("fan[3]").status == StepStatus.SKIPPED
    assert summary.step("fan").status == StepStatus.FAILED
    assert summary.step("after").status == StepStatus.SKIPPED


async def test_an_empty_list_succeeds_with_no_results(harness: Harness) -> None:
    summary = await run(harness, with_params(fan_pipeline(), regions=[]))
    assert summary.status == RunStatus.SUCCEEDED
    fan = summary.step("fan")
    assert fan.result is not None and fan.result.outputs == {"results": [], "count": 0}
    assert summary.step("after").status == StepStatus.SUCCEEDED
    assert not any(s.step_id.startswith("fan[") for s in summary.steps)


async def test_something_that_is_no_list_fails_the_step_with_the_reason(harness: Harness) -> None:
    summary = await run_failing(harness, with_params(fan_pipeline(), regions="eu,us"))
    fan = summary.step("fan")
    assert fan.error_type == "ForEachError"
    assert fan.error == "for_each: {{ params.regions }} yielded str, not a list"


async def test_instances_are_recorded_one_row_each(
    client: Client, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    with transaction(sessions) as session:
        tenant, pipe, version = tenant_with_pipeline(session)
        row, _ = insert_run(session, new_run(tenant, pipe, version, uuid.uuid4().hex))
        run_pk, workflow_id = row.id, row.workflow_id
    executor = ScriptedExecutor(behaviors={"fan[1]": Behavior(fail_times=1)})
    queue = f"test-{uuid.uuid4()}"
    definition = fan_pipeline(retry={"initial_interval": 0.1})
    context = RunContext.manual("p", workflow_id, datetime(2026, 1, 31, tzinfo=UTC),
                                {"regions": ["a", "b"]})  # fmt: skip
    async with worker_for(client, executor, tmp_path, queue, sessions):
        await client.execute_workflow(
            PipelineRunWorkflow.run,
            RunInput(pipeline=definition, context=context, source_dir=".", record=True),
            id=workflow_id,
            task_queue=queue,
        )
    with sessions() as session:
        rows = session.execute(
            select(StepRun.step_id, StepRun.attempt, StepRun.status)
            .where(StepRun.run_id == run_pk)
            .order_by(StepRun.step_id, StepRun.attempt)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("after", 1, "SUCCEEDED"),
        ("fan", 1, "SUCCEEDED"),
        ("fan[0]", 1, "SUCCEEDED"),
        ("fan[1]", 1, "FAILED"),
        ("fan[1]", 2, "SUCCEEDED"),
    ]
    with sessions() as session:
        status = session.execute(select(Run.status).where(Run.id == run_pk)).scalar_one()
    assert status == "SUCCEEDED"  # the child runs never recorded a run status of their own


@pytest.mark.slow
async def test_a_thousand_items_keep_every_history_small(harness: Harness) -> None:
    items = list(range(1000))
    definition = pipeline(
        [{"id": "fan", "for_each": "{{ params.regions }}", "max_parallel": 50}],
        params={"regions": REGIONS},
    )
    run_input = with_params(definition, regions=items)
    summary = await run(harness, run_input)
    fan = summary.step("fan")
    assert fan.result is not None and fan.result.outputs["count"] == 1000
    assert [r["item"] for r in fan.result.outputs["results"]] == items
    parent = await harness.client.get_workflow_handle(run_input.context.run_id).fetch_history()
    children = [
        e
        for e in parent.events
        if e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
    ]
    assert len(children) == 5  # 200 items per child run
    sizes = [len(parent.events)]
    for number in range(5):
        child_id = f"{run_input.context.run_id}/fan/for_each/{number}"
        child = await harness.client.get_workflow_handle(child_id).fetch_history()
        sizes.append(len(child.events))
    print(f"history events: parent {sizes[0]}, children {sizes[1:]}")
    assert sizes[0] < 100
    assert max(sizes[1:]) < 2000
