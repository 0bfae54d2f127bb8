"""workflows/dag.py: pure DAG logic, no Temporal."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.run import StepStatus
from workflows import dag


@dataclass
class S:
    id: str
    depends_on: list[str] = field(default_factory=list)


DIAMOND = dag.dependencies(
    [S("a"), S("b", ["a"]), S("c", ["a"]), S("d", ["b", "c"]), S("e"), S("f", ["d"])]
)
P, R, OK, FAIL = StepStatus.PENDING, StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED


def statuses(**given: StepStatus) -> dict[str, StepStatus]:
    return {step: given.get(step, P) for step in DIAMOND}


def test_ready_initially_roots_in_definition_order() -> None:
    assert dag.ready(DIAMOND, statuses()) == ["a", "e"]


def test_ready_waits_for_all_dependencies() -> None:
    assert dag.ready(DIAMOND, statuses(a=OK, b=OK, c=R, e=OK)) == []
    assert dag.ready(DIAMOND, statuses(a=OK, b=OK, c=OK, e=OK)) == ["d"]


def test_running_and_finished_steps_are_not_ready() -> None:
    assert dag.ready(DIAMOND, statuses(a=R, e=OK)) == []


def test_failed_dependency_blocks() -> None:
    assert dag.ready(DIAMOND, statuses(a=OK, b=FAIL, c=OK, e=OK)) == []


def test_to_skip_is_transitive_and_only_pending() -> None:
    assert dag.to_skip(DIAMOND, "b", statuses(a=OK, b=FAIL, c=R)) == ["d", "f"]
    assert dag.to_skip(DIAMOND, "a", statuses(a=FAIL, e=OK)) == ["b", "c", "d", "f"]
    assert dag.to_skip(DIAMOND, "e", statuses(e=FAIL)) == []


def test_downstream() -> None:
    assert dag.downstream(DIAMOND, "c") == ["d", "f"]
    assert dag.downstream(DIAMOND, "f") == []


def test_levels() -> None:
    assert dag.levels(DIAMOND) == [["a", "e"], ["b", "c"], ["d"], ["f"]]


def test_levels_of_a_chain() -> None:
    chain = dag.dependencies([S(f"s{i}", [f"s{i - 1}"] if i else []) for i in range(5)])
    assert dag.levels(chain) == [[f"s{i}"] for i in range(5)]


def test_dependents() -> None:
    assert dag.dependents(DIAMOND)["a"] == ["b", "c"]


def test_compensation_order_newest_first_only_declared() -> None:
    assert dag.compensation_order(["a", "c", "b", "e"], {"a", "b", "e"}) == ["e", "b", "a"]
    assert dag.compensation_order([], {"a"}) == []
