"""Dynamic fan-out (`for_each`): the list a step fans out over, its instances, their result.

Pure (no Temporal calls, no I/O): the workflow evaluates items and builds instances
deterministically, and unit tests reach it without a server. Instances run in child runs of
FOR_EACH_BATCH items each (see PipelineRunWorkflow._fan_out), so neither the parent's history
nor a child's grows with thousands of items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schemas.pipeline import MAX_FOR_EACH_ITEMS, Step, StepOnFailure, TriggerRule
from schemas.run import FanOut, RunContext, StepResult, StepState, StepStatus, UpstreamResult
from schemas.templating import TemplateProblem, evaluate_expression, single_expression

FOR_EACH_PATCH = "for-each"
"""Patch id: steps with `for_each` fan out into child runs of their instances."""
FOR_EACH_BATCH = 200
"""Instances per child run: a child's history holds at most this many steps' events."""
FOR_EACH_FAILED = "ForEachFailed"
FOR_EACH_ERROR = "ForEachError"
"""The list could not be evaluated, or is no list, or is too long (non-retryable)."""


class ForEachProblem(ValueError):
    """A `for_each` expression that does not yield a usable list."""


def instance_id(step_id: str, index: int) -> str:
    return f"{step_id}[{index}]"


def items_of(step: Step, context: RunContext, upstream: Mapping[str, UpstreamResult]) -> list[Any]:
    """The list `step.for_each` yields for this run."""
    assert step.for_each is not None
    expression = single_expression(step.for_each)
    if expression is None:
        raise ForEachProblem("for_each: expected one expression, like '{{ params.regions }}'")
    try:
        value = evaluate_expression(expression, context, upstream)
    except TemplateProblem as exc:
        raise ForEachProblem(f"for_each: {exc}") from exc
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise ForEachProblem(
            f"for_each: {step.for_each.strip()} yielded {type(value).__name__}, not a list"
        )
    if len(value) > MAX_FOR_EACH_ITEMS:
        raise ForEachProblem(
            f"for_each: {len(value)} items, more than the limit of {MAX_FOR_EACH_ITEMS}"
        )
    return list(value)


def batches(
    step_id: str, items: list[Any], upstream: dict[str, UpstreamResult], fail_fast: bool
) -> list[FanOut]:
    """The child runs of a step's instances, FOR_EACH_BATCH items each, in item order."""
    return [
        FanOut(
            step_id=step_id,
            items=items[offset : offset + FOR_EACH_BATCH],
            offset=offset,
            upstream=upstream,
            fail_fast=fail_fast,
        )
        for offset in range(0, len(items), FOR_EACH_BATCH)
    ]


def instance_steps(step: Step, fan_out: FanOut) -> list[Step]:
    """One copy of the step per item of the batch, named `<id>[<index>]`: no dependencies or
    control flow of its own (the step as a whole has them in the parent run)."""
    return [
        step.model_copy(
            update={
                "id": instance_id(step.id, fan_out.offset + i),
                "depends_on": [],
                "for_each": None,
                "when": None,
                "trigger_rule": TriggerRule.ALL_SUCCESS,
                "on_failure": StepOnFailure.FAIL,
                "compensate": None,
            }
        )
        for i in range(len(fan_out.items))
    ]


def instance_context(context: RunContext, fan_out: FanOut, position: int) -> RunContext:
    """The run context an instance's templates see: the run's, with `item` and `item_index`."""
    return context.model_copy(
        update={"item": fan_out.items[position], "item_index": fan_out.offset + position}
    )


def result_of(instances: Sequence[StepState]) -> StepResult:
    """The step's result once every instance succeeded: their results in item order."""
    results = [state.result.outputs if state.result else {} for state in instances]
    rows = [state.result.rows_affected for state in instances if state.result]
    known = [r for r in rows if r is not None]
    return StepResult(
        rows_affected=sum(known) if known else None,
        outputs={"results": results, "count": len(instances)},
    )


def failure_of(step_id: str, instances: Sequence[StepState], total: int) -> str | None:
    """Why the step failed (its instances' failures), or None when all succeeded."""
    bad = [s for s in instances if s.status != StepStatus.SUCCEEDED]
    if not bad and len(instances) == total:
        return None
    if not bad:
        return f"{total - len(instances)} of {total} instances did not run"
    first = next((s for s in bad if s.status == StepStatus.FAILED), bad[0])
    detail = f"{first.step_id} {first.status.value.lower()}: {first.error}"
    return f"{len(bad)} of {total} instances of '{step_id}' did not succeed (first: {detail})"
