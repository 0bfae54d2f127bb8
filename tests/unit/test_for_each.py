"""`for_each`: validation with paths, the list an expression yields, instances and results."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.run import FanOut, RunContext, StepResult, StepState, StepStatus, UpstreamResult
from schemas.sql_templates import render_sql
from schemas.templating import render_text
from workflows import for_each


def definition(steps: list[dict[str, Any]], **extra: Any) -> Any:
    for step in steps:
        step.setdefault("type", "noop")
    return validate_pipeline({"name": "p", "steps": steps, **extra}, source_dir=Path("."))


def problems(steps: list[dict[str, Any]], **extra: Any) -> list[str]:
    with pytest.raises(PipelineValidationError) as info:
        definition(steps, **extra)
    return [str(p) for p in info.value.problems]


def context(**params: Any) -> RunContext:
    return RunContext.manual("p", "r", datetime(2026, 1, 31, tzinfo=UTC), params)


def test_mistakes_are_reported_with_paths() -> None:
    found = problems(
        [
            {"id": "a", "for_each": "regions"},
            {"id": "b", "for_each": "{{ params.nope }}"},
            {"id": "c", "for_each": "{{ steps.a.result.files }}"},
            {"id": "d", "type": "notification", "channel": "c", "message": "{{ item }}"},
            {"id": "e", "max_parallel": 300},
            {"id": "f", "for_each": "{{ [1] }}", "compensate": {"id": "u", "type": "noop"}},
            {"id": "g", "for_each": "{{ [1] }}", "when": "{{ item }}"},
            {"id": "h" * 60, "for_each": "{{ [1] }}"},
            {"id": "i", "for_each": "{{ [1] }}", "max_parallel": 0},
        ]
    )
    assert any(p.startswith("steps[0].for_each: expected one expression") for p in found)
    assert any(p.startswith("steps[1].for_each: unknown param 'nope'") for p in found)
    assert any(p.startswith("steps[2].for_each: step 'a' is not upstream of 'c'") for p in found)
    assert any(
        p.startswith("steps[3].message: 'item' is only defined in a step with for_each")
        for p in found
    )
    assert any(p.startswith("steps[5].compensate: a for_each step cannot") for p in found)
    assert any(p.startswith("steps[6].when: 'item' is only defined") for p in found)
    assert any(p.startswith("steps[7].id: a for_each step's id must leave room") for p in found)
    assert any(p.startswith("steps[8].max_parallel") for p in found)
    assert any(p.startswith("steps[4].max_parallel") for p in found)


def test_item_is_usable_in_a_for_each_steps_templates() -> None:
    pipeline = definition(
        [
            {"id": "ls"},
            {
                "id": "load",
                "type": "sql",
                "depends_on": ["ls"],
                "for_each": "{{ steps.ls.result.files }}",
                "max_parallel": 8,
                "sql": "INSERT INTO t SELECT * FROM read_csv({{ item.path }}) -- {{ item_index }}",
            },
        ]
    )
    load = pipeline.steps[1]
    assert load.for_each == "{{ steps.ls.result.files }}" and load.max_parallel == 8


def test_items_of_a_param_and_of_an_upstream_result() -> None:
    step = definition([{"id": "a", "for_each": "{{ params.regions }}"}],
                      params={"regions": "x"}).steps[0]  # fmt: skip
    assert for_each.items_of(step, context(regions=["eu", "us"]), {}) == ["eu", "us"]
    step = definition(
        [{"id": "ls"}, {"id": "a", "depends_on": ["ls"], "for_each": "{{ steps.ls.result.f }}"}]
    ).steps[1]
    upstream = {"ls": UpstreamResult(result={"f": [{"path": "a.csv"}]})}
    assert for_each.items_of(step, context(), upstream) == [{"path": "a.csv"}]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("eu,us", "yielded str, not a list"),
        ({"a": 1}, "yielded dict, not a list"),
        (3, "yielded int, not a list"),
        (list(range(2_001)), "2001 items, more than the limit of 2000"),
    ],
)
def test_what_is_no_usable_list(value: object, message: str) -> None:
    step = definition([{"id": "a", "for_each": "{{ params.v }}"}], params={"v": "x"}).steps[0]
    with pytest.raises(for_each.ForEachProblem, match=message):
        for_each.items_of(step, context(v=value), {})


def test_a_missing_name_is_a_problem_not_a_crash() -> None:
    step = definition([{"id": "ls"}, {"id": "a", "depends_on": ["ls"],
                       "for_each": "{{ steps.ls.result.files }}"}]).steps[1]  # fmt: skip
    with pytest.raises(for_each.ForEachProblem, match="for_each: template error"):
        for_each.items_of(step, context(), {"ls": UpstreamResult(result={})})


def test_batches_instances_and_their_context() -> None:
    step = definition([{"id": "a", "for_each": "{{ [1] }}"}]).steps[0]
    items = list(range(450))
    batches = for_each.batches("a", items, {}, fail_fast=False)
    assert [(b.offset, len(b.items)) for b in batches] == [(0, 200), (200, 200), (400, 50)]
    instances = for_each.instance_steps(step, batches[2])
    assert [s.id for s in instances[:2]] == ["a[400]", "a[401]"]
    assert all(s.for_each is None and not s.depends_on for s in instances)
    ctx = for_each.instance_context(context(), batches[2], 1)
    assert (ctx.item, ctx.item_index) == (401, 401)
    assert render_text("{{ item }}-{{ item_index }}", ctx) == "401-401"
    sql, binds = render_sql("SELECT {{ item }}", ctx)
    assert list(binds.values()) == [401] and "401" not in sql


def test_result_in_item_order_and_failure_text() -> None:
    def state(i: int, status: StepStatus, error: str | None = None) -> StepState:
        result = StepResult(outputs={"i": i}) if status == StepStatus.SUCCEEDED else None
        return StepState(step_id=f"a[{i}]", type="noop", status=status, result=result, error=error)

    ok = [state(0, StepStatus.SUCCEEDED), state(1, StepStatus.SUCCEEDED)]
    assert for_each.result_of(ok).outputs == {"results": [{"i": 0}, {"i": 1}], "count": 2}
    assert for_each.failure_of("a", ok, 2) is None
    assert for_each.failure_of("a", [], 0) is None
    bad = [ok[0], state(1, StepStatus.FAILED, "boom")]
    assert for_each.failure_of("a", bad, 2) == (
        "1 of 2 instances of 'a' did not succeed (first: a[1] failed: boom)"
    )
    assert for_each.failure_of("a", ok, 5) == "3 of 5 instances did not run"
    assert FanOut(step_id="a", items=[]).offset == 0
