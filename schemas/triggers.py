"""Whole-definition checks of `triggers`: JSONPaths that parse, params that are declared."""

from __future__ import annotations

from jsonpath_ng.ext.parser import parse

from schemas.documents import Problem
from schemas.pipeline import PipelineDefinition


def _path_problem(value: str) -> str | None:
    try:
        parse(value)
    except Exception as exc:  # the parser raises several types, some plain Exception
        return f"invalid JSONPath {value!r}: {exc}"
    return None


def trigger_problems(pipeline: PipelineDefinition) -> list[Problem]:
    problems = []
    for i, trigger in enumerate(pipeline.triggers):
        kafka = trigger.kafka
        at = f"triggers[{i}].kafka"
        paths = {"filter": kafka.filter, "key_field": kafka.key_field}
        paths |= {f"params_from.{name}": path for name, path in kafka.params_from.items()}
        for field, value in paths.items():
            problem = value and _path_problem(value)
            if problem:
                problems.append(Problem(f"{at}.{field}", problem))
        for name in kafka.params_from:
            if name not in pipeline.params:
                declared = ", ".join(sorted(pipeline.params)) or "none"
                problems.append(
                    Problem(
                        f"{at}.params_from.{name}",
                        f"unknown param {name!r} (declared: {declared})",
                    )
                )
    return problems
