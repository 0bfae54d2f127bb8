"""Pure DAG logic for pipeline runs: dependencies, ready set, skip propagation, levels.

No Temporal and no I/O, so the workflow can call it deterministically and tests can call it
directly. Orders are always the definition order of the steps, so results are reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from graphlib import TopologicalSorter
from typing import Protocol

from schemas.run import StepStatus


class HasDependencies(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def depends_on(self) -> list[str]: ...


Graph = dict[str, tuple[str, ...]]
"""step id -> the ids it depends on, in definition order."""


def dependencies(steps: Iterable[HasDependencies]) -> Graph:
    return {step.id: tuple(step.depends_on) for step in steps}


def dependents(graph: Graph) -> dict[str, list[str]]:
    """step id -> the ids that depend on it directly, in definition order."""
    result: dict[str, list[str]] = {step_id: [] for step_id in graph}
    for step_id, deps in graph.items():
        for dep in deps:
            result[dep].append(step_id)
    return result


def ready(graph: Graph, statuses: Mapping[str, StepStatus]) -> list[str]:
    """Pending steps whose dependencies have all succeeded, in definition order."""
    return [
        step_id
        for step_id, deps in graph.items()
        if statuses[step_id] == StepStatus.PENDING
        and all(statuses[dep] == StepStatus.SUCCEEDED for dep in deps)
    ]


def downstream(graph: Graph, step_id: str) -> list[str]:
    """Every step that depends on `step_id`, directly or not, in definition order."""
    children = dependents(graph)
    seen: set[str] = set()
    stack = list(children[step_id])
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(children[current])
    return [s for s in graph if s in seen]


def to_skip(graph: Graph, failed: str, statuses: Mapping[str, StepStatus]) -> list[str]:
    """Steps that can no longer run because `failed` failed: its pending descendants."""
    return [s for s in downstream(graph, failed) if statuses[s] == StepStatus.PENDING]


def levels(graph: Graph) -> list[list[str]]:
    """Steps grouped by depth: level N holds the steps whose dependencies are all in levels < N."""
    order = {step_id: i for i, step_id in enumerate(graph)}
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    result: list[list[str]] = []
    while sorter.is_active():
        batch = sorted(sorter.get_ready(), key=order.__getitem__)
        result.append(batch)
        sorter.done(*batch)
    return result


def compensation_order(completed: Sequence[str], has_compensation: Iterable[str]) -> list[str]:
    """Steps to compensate: completed steps that declare `compensate`, newest first (saga)."""
    wanted = set(has_compensation)
    return [step_id for step_id in reversed(completed) if step_id in wanted]
