"""Replay saved PipelineRunWorkflow histories: a workflow change that would break runs in flight
fails here (a non-determinism error) instead of in production. Histories that are missing are
recorded from live runs when LAMINAR_RECORD_HISTORIES=1 (commit them)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.worker import Replayer

from pipeline_service.db.migrate import upgrade
from pipeline_service.db.pools import set_pool
from pipeline_service.db.session import make_engine, session_factory, transaction
from pipeline_service.temporal.client import data_converter
from schemas.run import RunStepInput
from tests.integration.scripted import (
    Behavior,
    ScriptedExecutor,
    pipeline,
    run_input,
    worker_for,
)
from workflows.pipeline_run import HANDOFF_TABLES_PATCH, PipelineRunWorkflow

HISTORIES = Path(__file__).resolve().parent.parent / "histories"

SCENARIOS: dict[str, tuple[dict[str, Behavior], list[dict[str, Any]], dict[str, Any]]] = {
    # parallel branches, a retried step, a join
    "diamond_with_retry": (
        {"b": Behavior(fail_times=1), "c": Behavior(sleep=0.2)},
        [
            {"id": "a"},
            {"id": "b", "depends_on": ["a"], "retry": {"initial_interval": 0.2}},
            {"id": "c", "depends_on": ["a"]},
            {"id": "d", "depends_on": ["b", "c"]},
        ],
        {},
    ),
    # a failure that skips downstream and compensates finished steps
    "failure_with_compensation": (
        {"boom": Behavior(fail_times=9, retryable=False)},
        [
            {"id": "a", "compensate": {"id": "undo_a", "type": "noop"}},
            {"id": "b", "depends_on": ["a"], "compensate": {"id": "undo_b", "type": "noop"}},
            {"id": "boom", "depends_on": ["b"]},
            {"id": "after", "depends_on": ["boom"]},
        ],
        {"on_failure": "compensate"},
    ),
    # local steps (behind the "local-steps" patch) around a regular one; a local retry
    "local_steps": (
        {"flaky": Behavior(fail_times=1)},
        [
            {"id": "start", "local": True},
            {
                "id": "flaky",
                "depends_on": ["start"],
                "local": True,
                "retry": {"initial_interval": 0.1},
            },
            {"id": "regular", "depends_on": ["start"]},
            {"id": "join", "depends_on": ["flaky", "regular"], "local": True},
        ],
        {},
    ),
    # workflow-driven retries (patch workflow-driven-retries): an error retried after a
    # durable timer, and a step whose attempts time out until it fails
    "workflow_driven_retries": (
        {"flaky": Behavior(fail_times=1), "slow": Behavior(sleep=5)},
        [
            {"id": "flaky", "retry": {"initial_interval": 0.2}},
            {
                "id": "slow",
                "timeout": "1s",
                "retry": {"max_attempts": 2, "initial_interval": 0.2},
            },
            {"id": "after", "depends_on": ["flaky", "slow"]},
        ],
        {},
    ),
    # both patches at once: local steps whose failed attempts the workflow retries
    "local_steps_with_workflow_retries": (
        {"flaky": Behavior(fail_times=1)},
        [
            {"id": "start", "local": True},
            {
                "id": "flaky",
                "depends_on": ["start"],
                "local": True,
                "retry": {"initial_interval": 0.1},
            },
            {"id": "regular", "depends_on": ["start"]},
            {"id": "join", "depends_on": ["flaky", "regular"], "local": True},
        ],
        {},
    ),
    # a failure under the default on_failure (continue): its dependents are skipped while an
    # independent branch finishes (saved before control flow: trigger rules, fail_fast)
    "recorded_failure_skips_dependents": (
        {"boom": Behavior(fail_times=9, retryable=False), "side": Behavior(sleep=0.3)},
        [
            {"id": "boom"},
            {"id": "side"},
            {"id": "after", "depends_on": ["boom"]},
            {"id": "last", "depends_on": ["after", "side"]},
        ],
        {},
    ),
    # control flow (patch control-flow): fail_fast cancels a sibling, an all_done cleanup and
    # a one_failed alert run, an ignored failure, a `when:` that skips
    "recorded_control_flow": (
        {
            "boom": Behavior(sleep=0.3, fail_times=9, retryable=False),
            "optional": Behavior(fail_times=9, retryable=False),
            "slow": Behavior(sleep=30),
        },
        [
            {"id": "optional", "on_failure": "ignore"},
            {"id": "gated", "depends_on": ["optional"], "when": "{{ ds == '1999-01-01' }}"},
            {"id": "boom", "depends_on": ["optional"]},
            {"id": "slow", "heartbeat_timeout": "1s"},
            {"id": "cleanup", "depends_on": ["boom", "slow"], "trigger_rule": "all_done"},
            {"id": "alert", "depends_on": ["boom"], "trigger_rule": "one_failed"},
        ],
        {"on_failure": "fail_fast"},
    ),
}
# The same scenarios with run-state recording on (RunInput.record): the histories carry the
# `record-run-events` patch marker and one record_run_event local activity per workflow task.
SCENARIOS["recorded_diamond_with_retry"] = SCENARIOS["diamond_with_retry"]
SCENARIOS["recorded_failure_with_compensation"] = SCENARIOS["failure_with_compensation"]
# Steps holding pool slots (patch "pools"): two parallel steps share a pool of one; one is
# retried, releasing its slot between attempts.
SCENARIOS["recorded_pools"] = (
    {"b": Behavior(fail_times=1), "a": Behavior(sleep=0.2)},
    [
        {"id": "a", "pool": "engine"},
        {"id": "b", "pool": "engine", "retry": {"initial_interval": 0.2}},
        {"id": "c", "depends_on": ["a", "b"]},
    ],
    {},
)
# Recorded before steps could name a pool (patch "pools"): runs in flight at that change.
SCENARIOS["recorded_before_pools"] = SCENARIOS["workflow_driven_retries"]
# Recorded before sensor steps existed (patch "sensors"): a run in flight at that change.
SCENARIOS["recorded_before_sensors"] = SCENARIOS["diamond_with_retry"]
# Recorded before the workflow told each attempt when its step first started (patch
# "step-started-at"): a retried step's attempts then carried no start of their own.
SCENARIOS["recorded_before_step_started_at"] = SCENARIOS["workflow_driven_retries"]
# With that patch: every attempt's input carries the step's first start (RunStepInput).
SCENARIOS["step_started_at"] = SCENARIOS["workflow_driven_retries"]
# Recorded before for_each existed (patch "for-each"): a run in flight at that change.
SCENARIOS["recorded_before_for_each"] = SCENARIOS["recorded_control_flow"]
# for_each (patch "for-each"): three instances, two at a time, one retried; a join after.
SCENARIOS["recorded_for_each"] = (
    {"fan[1]": Behavior(fail_times=1)},
    [
        {"id": "start"},
        {
            "id": "fan",
            "depends_on": ["start"],
            "for_each": "{{ ['eu', 'us', 'apac'] }}",
            "max_parallel": 2,
            "retry": {"initial_interval": 0.2},
        },
        {"id": "join", "depends_on": ["fan"]},
    ],
    {},
)
CHILD_RUNS = {"recorded_for_each": {"recorded_for_each_child": "fan/for_each/0"}}
"""Child runs recorded with a scenario: history name -> workflow id after the parent's."""
# Step attempts recorded by their workers (patch "record-attempts-in-worker"): the workflow
# records only the run's end, retries, skips, cancels and compensation. The recorded_* histories
# above were saved before it (each step's start and end recorded by the workflow) and replay
# on the old path.
SCENARIOS["recorded_attempts_in_worker"] = SCENARIOS["diamond_with_retry"]
SCENARIOS["recorded_attempts_in_worker_compensation"] = SCENARIOS["failure_with_compensation"]
SCENARIOS["recorded_attempts_in_worker_control_flow"] = SCENARIOS["recorded_control_flow"]
# Sensors (patch "sensors"): one met on its third check, one that times out; their dependants.
SCENARIOS["sensors"] = (
    {"ready": Behavior(unmet_checks=2), "never": Behavior(unmet_checks=1000)},
    [
        {"id": "ready", "type": "sensor", "file": "in.csv", "poke_interval": 0.2, "timeout": 30},
        {"id": "never", "type": "sensor", "file": "no.csv", "poke_interval": 0.2, "timeout": 1},
        {"id": "after_ready", "depends_on": ["ready"]},
        {"id": "after_never", "depends_on": ["never"]},
    ],
    {},
)

# Steps that wrote warehouse tables (patch "handoff-written-tables"): `report`'s input names
# the latest writer among its ancestors of each table; `side` is no ancestor of it.
SCENARIOS["handoff_written_tables"] = (
    {
        "load": Behavior(writes=("orders",)),
        "enrich": Behavior(writes=("items", "orders")),
        "side": Behavior(writes=("other",)),
    },
    [
        {"id": "load"},
        {"id": "side"},
        {"id": "enrich", "depends_on": ["load"]},
        {"id": "report", "depends_on": ["enrich"]},
    ],
    {},
)


async def _record(client: Client, tmp_path: Path, name: str) -> None:
    behaviors, steps, extra = SCENARIOS[name]
    executor = ScriptedExecutor(behaviors=dict(behaviors))
    queue = f"record-{uuid.uuid4()}"
    run_id = f"test/{name}"
    recorded = name.startswith("recorded_")
    sessions = None
    if recorded:
        engine = make_engine(f"sqlite:///{tmp_path / 'record.db'}")
        upgrade(engine)
        sessions = session_factory(engine)
        with transaction(sessions) as session:
            set_pool(session, None, "engine", 1, actor="test")
    async with worker_for(client, executor, tmp_path, queue, sessions):
        handle = await client.start_workflow(
            PipelineRunWorkflow.run,
            run_input(pipeline(steps, **extra), run_id, record=recorded),
            id=f"{run_id}/{uuid.uuid4()}",
            task_queue=queue,
        )
        with contextlib.suppress(WorkflowFailureError):
            await handle.result()
    history = await handle.fetch_history()
    (HISTORIES / f"{name}.json").write_text(history.to_json())
    for child_name, child_id in CHILD_RUNS.get(name, {}).items():
        child = await client.get_workflow_handle(f"{run_id}/{child_id}").fetch_history()
        (HISTORIES / f"{child_name}.json").write_text(child.to_json())


@pytest.mark.parametrize("name", sorted(n for children in CHILD_RUNS.values() for n in children))
async def test_replay_saved_child_history(name: str) -> None:
    """A child run (for_each instances) replays on its own: its history is recorded with its
    parent's (above)."""
    path = HISTORIES / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: record its parent with LAMINAR_RECORD_HISTORIES=1")
    replayer = Replayer(workflows=[PipelineRunWorkflow], data_converter=data_converter)
    await replayer.replay_workflow(WorkflowHistory.from_json(name, path.read_text()))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_replay_saved_history(name: str, client: Client, tmp_path: Path) -> None:
    path = HISTORIES / f"{name}.json"
    if not path.exists():
        if not os.environ.get("LAMINAR_RECORD_HISTORIES"):
            pytest.fail(f"{path} is missing: record it with LAMINAR_RECORD_HISTORIES=1")
        await _record(client, tmp_path, name)
    replayer = Replayer(workflows=[PipelineRunWorkflow], data_converter=data_converter)
    history = WorkflowHistory.from_json(name, path.read_text())
    await replayer.replay_workflow(history)


def test_a_step_is_given_the_tables_its_ancestors_wrote() -> None:
    """In the saved history (a real run): each step's input names, per table, the ancestor that
    wrote it last; steps with no writing ancestor get nothing. (Histories from before never
    pass the patch: their results have no `written`; they replay above.)"""
    history = WorkflowHistory.from_json(
        "h", (HISTORIES / "handoff_written_tables.json").read_text()
    )
    given: dict[str, dict[str, str]] = {}
    patches: list[bytes] = []
    for event in history.events:
        if event.HasField("marker_recorded_event_attributes"):
            details = event.marker_recorded_event_attributes.details
            patches += [p.data for p in details["patch-data"].payloads]
        if event.HasField("activity_task_scheduled_event_attributes"):
            payloads = event.activity_task_scheduled_event_attributes.input.payloads
            (step_input,) = data_converter.payload_converter.from_payloads(
                list(payloads), [RunStepInput]
            )
            given[step_input.step.id] = step_input.handoff_tables
    assert given == {
        "load": {},
        "side": {},
        "enrich": {"orders": "load"},
        "report": {"items": "enrich", "orders": "enrich"},
    }
    assert any(HANDOFF_TABLES_PATCH.encode() in data for data in patches), patches
