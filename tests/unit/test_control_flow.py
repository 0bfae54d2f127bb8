"""Control-flow decisions without Temporal (workflows/control_flow.py) and their validation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import TriggerRule
from schemas.run import RunContext, StepResult, StepState, StepStatus
from workflows.control_flow import ControlFlow, Outcome, condition_holds, rule_holds

S, F, K, C = Outcome.SUCCEEDED, Outcome.FAILED, Outcome.SKIPPED, Outcome.CANCELLED
CONTEXT = RunContext.manual("p", "r", datetime(2026, 1, 31, tzinfo=UTC), {"region": "US"})


@pytest.mark.parametrize(
    ("rule", "outcomes", "expected"),
    [
        (TriggerRule.ALL_SUCCESS, [S, S], True),
        (TriggerRule.ALL_SUCCESS, [S, None], None),
        (TriggerRule.ALL_SUCCESS, [F, None], False),  # decided before the other finishes
        (TriggerRule.ALL_SUCCESS, [K], False),
        (TriggerRule.ALL_SUCCESS, [], True),
        (TriggerRule.ALL_DONE, [F, K, C], True),
        (TriggerRule.ALL_DONE, [F, None], None),
        (TriggerRule.ALL_FAILED, [F, F], True),
        (TriggerRule.ALL_FAILED, [S, None], False),
        (TriggerRule.ONE_FAILED, [None, F], True),
        (TriggerRule.ONE_FAILED, [S, C], False),
        (TriggerRule.ONE_FAILED, [S, None], None),
        (TriggerRule.ONE_SUCCESS, [None, S], True),
        (TriggerRule.ONE_SUCCESS, [F, K], False),
        (TriggerRule.NONE_FAILED, [S, K], True),
        (TriggerRule.NONE_FAILED, [C, None], False),
        (TriggerRule.NONE_FAILED, [S, None], None),
    ],
)
def test_rule_holds(rule: TriggerRule, outcomes: list[Outcome | None], expected: object) -> None:
    assert rule_holds(rule, outcomes) is expected


def test_condition_texts() -> None:
    assert not any(condition_holds(t) for t in ("False", " 0 ", "", "no", "OFF", "None"))
    assert all(condition_holds(t) for t in ("True", "1", "yes", "EU"))


def flow(steps: list[dict[str, Any]], **extra: Any) -> tuple[ControlFlow, dict[str, StepState]]:
    for step in steps:
        step.setdefault("type", "noop")
    definition = validate_pipeline({"name": "p", "steps": steps, **extra}, source_dir=Path("."))
    states = {s.id: StepState(step_id=s.id, type=s.type) for s in definition.steps}
    return ControlFlow(definition, CONTEXT), states


def test_a_skip_decides_its_dependants_in_the_same_pass() -> None:
    control, states = flow(
        [
            {"id": "a"},
            {"id": "b", "depends_on": ["a"]},
            {"id": "c", "depends_on": ["b"]},
            {"id": "d", "depends_on": ["c"], "trigger_rule": "all_done"},
            {"id": "e", "depends_on": ["a"], "trigger_rule": "one_failed"},
        ]
    )
    assert control.decide(states).run == ["a"]
    states["a"].status = StepStatus.FAILED
    decisions = control.decide(states)
    assert decisions.run == ["d", "e"]
    # the first failure is named all the way down, as before trigger rules
    assert decisions.skip == {"b": "upstream step 'a' failed", "c": "upstream step 'a' failed"}


def test_an_ignored_failure_is_a_success_downstream() -> None:
    control, states = flow([{"id": "a", "on_failure": "ignore"}, {"id": "b", "depends_on": ["a"]}])
    assert control.ignores_failure("a")
    states["a"].status, states["a"].failure_ignored = StepStatus.FAILED, True
    assert control.decide(states).run == ["b"]


def test_fail_fast_skips_all_but_failure_tolerant_steps() -> None:
    control, states = flow(
        [
            {"id": "a"},
            {"id": "b"},
            {"id": "c", "depends_on": ["b"]},
            {"id": "cleanup", "depends_on": ["a", "b"], "trigger_rule": "all_done"},
        ],
        on_failure="fail_fast",
    )
    states["a"].status, states["b"].status = StepStatus.FAILED, StepStatus.RUNNING
    assert control.note_failure("a") and not control.note_failure("x")  # only the first
    decisions = control.decide(states)
    assert decisions.skip == {"c": "the run failed fast: step 'a' failed"}
    assert decisions.run == []  # cleanup waits for b (being cancelled)
    states["b"].status = StepStatus.CANCELLED
    assert control.decide(states).run == ["cleanup"]


def test_continue_never_cancels() -> None:
    control, _ = flow([{"id": "a"}], on_failure="continue")
    assert not control.note_failure("a")


def test_when_over_params_and_upstream_results() -> None:
    control, states = flow(
        [
            {"id": "a"},
            {"id": "eu", "depends_on": ["a"], "when": "{{ params.region == 'EU' }}"},
            {"id": "many", "depends_on": ["a"], "when": "{{ steps.a.result.rows > 2 }}"},
            {"id": "bad", "depends_on": ["a"], "when": "{{ steps.a.result.nope }}"},
        ],
        params={"region": "EU"},
    )
    states["a"].status = StepStatus.SUCCEEDED
    states["a"].result = StepResult(outputs={"rows": 3})
    decisions = control.decide(states)
    assert decisions.run == ["many"]
    assert decisions.skip == {
        "eu": "condition false: when {{ params.region == 'EU' }} rendered 'False'"
    }
    assert decisions.fail == {"bad": "when: template error: 'dict object' has no attribute 'nope'"}


def problems(steps: list[dict[str, Any]], **extra: Any) -> list[str]:
    for step in steps:
        step.setdefault("type", "noop")
    with pytest.raises(PipelineValidationError) as info:
        validate_pipeline({"name": "p", "steps": steps, **extra}, source_dir=Path("."))
    return [str(p) for p in info.value.problems]


def test_control_flow_mistakes_are_reported_with_paths() -> None:
    found = problems(
        [
            {"id": "a", "trigger_rule": "one_failed"},
            {"id": "b", "depends_on": ["a"], "when": "{{ params.nope }}"},
            {"id": "c", "when": "{{ steps.b.result.x }}"},
            {
                "id": "d",
                "compensate": {"id": "undo", "type": "noop", "trigger_rule": "all_done"},
            },
            {"id": "e", "trigger_rule": "sometimes"},
            {"id": "f", "on_failure": "shrug"},
        ],
        on_failure="maybe",
    )
    assert any(p.startswith("steps[0].trigger_rule: trigger rule 'one_failed'") for p in found)
    assert any(p.startswith("steps[1].when: unknown param 'nope'") for p in found)
    assert any(p.startswith("steps[2].when: step 'b' is not upstream of 'c'") for p in found)
    assert any(
        p.startswith("steps[3].compensate.trigger_rule: trigger_rule does not") for p in found
    )
    assert any(p.startswith("steps[4].trigger_rule:") and "all_done" in p for p in found)
    assert any(p.startswith("steps[5].on_failure:") and "ignore" in p for p in found)
    assert any(p.startswith("on_failure:") and "fail_fast" in p for p in found)


def test_a_when_that_cannot_render_is_the_failure_that_fails_fast() -> None:
    control, states = flow(
        [
            {"id": "a", "when": "{{ params.nope_at_run_time }}"},
            {"id": "b", "depends_on": ["a"], "trigger_rule": "one_failed"},
            {"id": "c"},
        ],
        params={"nope_at_run_time": "x"},
        on_failure="fail_fast",
    )
    control.context = CONTEXT  # its params lack the name: rendering fails at run time
    decisions = control.decide(states)
    assert list(decisions.fail) == ["a"] and decisions.run == ["b", "c"]
    # the workflow records the failure, notes it and decides again before starting anything
    states["a"].status = StepStatus.FAILED
    assert control.note_failure("a")
    again = control.decide(states)
    assert again.run == ["b"] and again.skip == {"c": "the run failed fast: step 'a' failed"}
