"""A run's control flow: trigger rules, `when:` conditions, ignored failures and fail_fast.

Pure decisions from the definition and the steps' states (no Temporal calls, no I/O), so the
workflow makes them deterministically and unit tests reach them without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from schemas.pipeline import (
    FAILURE_TOLERANT_RULES,
    OnFailure,
    PipelineDefinition,
    Step,
    StepOnFailure,
    TriggerRule,
)
from schemas.run import RunContext, StepState, StepStatus, UpstreamResult
from schemas.templating import TemplateProblem, render_text, step_references
from workflows import dag

IGNORED_NOTE = " (ignored: on_failure: ignore)"
FALSE_TEXTS = frozenset({"", "false", "0", "no", "off", "none"})


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


_OUTCOMES = {
    StepStatus.SUCCEEDED: Outcome.SUCCEEDED,
    StepStatus.FAILED: Outcome.FAILED,
    StepStatus.SKIPPED: Outcome.SKIPPED,
    StepStatus.CANCELLED: Outcome.CANCELLED,
}


def outcome(state: StepState) -> Outcome | None:
    """How a step ended, as its dependants see it (None: not finished). An ignored failure
    is a success."""
    if state.status == StepStatus.FAILED and state.failure_ignored:
        return Outcome.SUCCEEDED
    return _OUTCOMES.get(state.status)


def rule_holds(rule: TriggerRule, outcomes: list[Outcome | None]) -> bool | None:
    """True: run; False: can no longer hold (skip); None: wait for more upstream steps."""
    done = [o for o in outcomes if o is not None]
    complete = len(done) == len(outcomes)
    if rule == TriggerRule.ALL_DONE:
        return True if complete else None
    if rule in (TriggerRule.ONE_SUCCESS, TriggerRule.ONE_FAILED):
        wanted = Outcome.SUCCEEDED if rule == TriggerRule.ONE_SUCCESS else Outcome.FAILED
        if wanted in done:
            return True
        return False if complete else None
    allowed = {
        TriggerRule.ALL_SUCCESS: {Outcome.SUCCEEDED},
        TriggerRule.ALL_FAILED: {Outcome.FAILED},
        TriggerRule.NONE_FAILED: {Outcome.SUCCEEDED, Outcome.SKIPPED},
    }[rule]
    if any(o not in allowed for o in done):
        return False
    return True if complete else None


def condition_holds(rendered: str) -> bool:
    """A `when:` template's rendered text: false, 0, no, off, none or empty is false."""
    return rendered.strip().lower() not in FALSE_TEXTS


@dataclass
class Decisions:
    run: list[str] = field(default_factory=list)
    skip: dict[str, str] = field(default_factory=dict)
    """step id -> why it does not run"""
    fail: dict[str, str] = field(default_factory=dict)
    """step id -> why its `when:` could not be decided (a template error)"""


class ControlFlow:
    """Decides which pending steps run, are skipped or fail, as upstream steps finish."""

    def __init__(self, pipeline: PipelineDefinition, context: RunContext) -> None:
        self.steps = {step.id: step for step in pipeline.steps}
        self.graph = dag.dependencies(pipeline.steps)
        self.context = context
        self.fail_fast = pipeline.on_failure == OnFailure.FAIL_FAST
        self.failed_fast: str | None = None
        """The failure that made the run fail fast."""

    def ignores_failure(self, step_id: str) -> bool:
        return self.steps[step_id].on_failure == StepOnFailure.IGNORE

    def note_failure(self, step_id: str) -> bool:
        """A step failed for good (not ignored): whether running steps must now be cancelled
        (the run's first failure under fail_fast)."""
        if self.fail_fast and self.failed_fast is None:
            self.failed_fast = step_id
            return True
        return False

    def decide(self, states: Mapping[str, StepState]) -> Decisions:
        """Decisions for every pending step that can be decided now, in definition order.
        A skip can decide further steps (its dependants), so this repeats until stable."""
        view = {step_id: state.model_copy() for step_id, state in states.items()}
        decisions = Decisions()
        changed = True
        while changed:
            changed = False
            for step_id, deps in self.graph.items():
                state = view[step_id]
                if state.status != StepStatus.PENDING:
                    continue
                verdict = self._decide(self.steps[step_id], deps, view)
                if verdict is None:
                    continue
                kind, reason = verdict
                changed = True
                if kind == "run":
                    decisions.run.append(step_id)
                    state.status = StepStatus.RUNNING
                elif kind == "skip":
                    decisions.skip[step_id] = reason
                    state.status, state.error = StepStatus.SKIPPED, reason
                else:
                    decisions.fail[step_id] = reason
                    state.status, state.error = StepStatus.FAILED, reason
        return decisions

    def _decide(
        self, step: Step, deps: tuple[str, ...], view: Mapping[str, StepState]
    ) -> tuple[str, str] | None:
        if self.failed_fast is not None and step.trigger_rule not in FAILURE_TOLERANT_RULES:
            return "skip", f"the run failed fast: step '{self.failed_fast}' failed"
        outcomes = [outcome(view[dep]) for dep in deps]
        holds = rule_holds(step.trigger_rule, outcomes)
        if holds is None:
            return None
        if not holds:
            return "skip", _skip_reason(step.trigger_rule, deps, outcomes, view)
        if step.when is None:
            return "run", ""
        upstream = {
            step_id: UpstreamResult(result=state.result.outputs, tables=state.result.tables)
            for step_id in sorted({ref[0] for ref in step_references(step.when)})
            if (state := view.get(step_id)) is not None and state.result is not None
        }
        try:
            rendered = render_text(step.when, self.context, upstream)
        except TemplateProblem as exc:
            return "fail", f"when: {exc}"
        if condition_holds(rendered):
            return "run", ""
        return "skip", f"condition false: when {step.when.strip()} rendered {rendered.strip()!r}"


def _skip_reason(
    rule: TriggerRule,
    deps: tuple[str, ...],
    outcomes: list[Outcome | None],
    view: Mapping[str, StepState],
) -> str:
    if rule == TriggerRule.ALL_SUCCESS:
        for dep, found in zip(deps, outcomes, strict=True):
            if found == Outcome.SKIPPED and (view[dep].error or "").startswith("upstream step"):
                return view[dep].error or ""  # the cause upstream, as before trigger rules
            if found not in (None, Outcome.SUCCEEDED):
                return f"upstream step '{dep}' {found.value}"
    ended = ", ".join(f"'{d}' {o.value}" for d, o in zip(deps, outcomes, strict=True) if o)
    return f"trigger rule {rule.value} cannot hold: upstream {ended}"
