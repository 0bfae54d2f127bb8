"""Checks of the data handed between steps: table names (`inputs`, `outputs`), output files,
and `{{ steps.<id>.result.<key> }}` / `{{ steps.<id>.outputs.<name> }}` against the DAG."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

from schemas.pipeline import (
    FlinkStep,
    NotificationStep,
    PythonStep,
    QualityStep,
    SensorStep,
    SparkStep,
    SqlStep,
    Step,
)
from schemas.run import UpstreamResult
from schemas.templating import STEP_FIELDS, step_references

OUTPUT_SUFFIXES = (".parquet", ".csv")
MAX_NAME_PART = 255


def table_name_problem(name: str) -> str | None:
    """Any name DuckDB accepts quoted (`städte`, `mart.Odd Name`): 1 to 3 dot-separated
    parts, none empty, no NUL."""
    parts = name.split(".")
    if 1 <= len(parts) <= 3 and all(0 < len(p) <= MAX_NAME_PART and "\x00" not in p for p in parts):
        return None
    return f"{name!r} is not a table name (name or schema.name, no NUL)"


def output_file_problem(file: str) -> str | None:
    path = PurePosixPath(file)
    if not file or path.is_absolute() or ".." in path.parts or "\\" in file or "\x00" in file:
        return f"{file!r} must be a file in the step's output directory"
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        return f"{file!r} must end in .parquet or .csv"
    return None


def ancestors(steps: Iterable[Step]) -> dict[str, set[str]]:
    """Step id -> every step upstream of it (transitively); cycles are reported elsewhere."""
    parents = {step.id: set(step.depends_on) for step in steps}
    found: dict[str, set[str]] = {}
    for start in parents:
        seen: set[str] = set()
        stack = list(parents[start])
        while stack:
            current = stack.pop()
            if current in seen or current == start:
                continue
            seen.add(current)
            stack.extend(parents.get(current, ()))
        found[start] = seen
    return found


def declared_outputs(steps: Iterable[Step]) -> dict[str, list[str]]:
    return {s.id: list(s.outputs) if isinstance(s, PythonStep) else [] for s in steps}


def reference_problems(
    text: str, owner: str, upstream: set[str], outputs: Mapping[str, list[str]]
) -> list[str]:
    """Problems of the `steps.<id>...` references in one template of step `owner`."""
    problems = []
    for step_id, field, name in step_references(text):
        if step_id not in outputs:
            problems.append(f"unknown step {step_id!r} in template")
        elif step_id not in upstream:
            problems.append(f"step {step_id!r} is not upstream of {owner!r} (add it to depends_on)")
        elif field not in STEP_FIELDS or name is None:
            problems.append(f"use steps.{step_id}.result.<key> or steps.{step_id}.outputs.<name>")
        elif field == "outputs" and name not in outputs[step_id]:
            known = ", ".join(outputs[step_id]) or "none"
            problems.append(f"step {step_id!r} declares no output {name!r} (outputs: {known})")
    return problems


FieldPath = tuple[str | int, ...]
"""A field's path inside its step: `("sql",)`, `("args", 0)`, `("env", "REGION")`."""


def templated_fields(step: Step) -> list[tuple[FieldPath, str]]:
    """Every field of a step that its executor renders as a template, with its path: the one
    list that validation checks and that decides which upstream results a step receives."""
    if isinstance(step, SqlStep):
        return [(("sql",), step.sql)]
    if isinstance(step, QualityStep):
        return [(("query",), step.query)] if step.query is not None else []
    if isinstance(step, NotificationStep):
        return [(("message",), step.message), (("title",), step.title)]
    if isinstance(step, PythonStep):
        return [
            (("script",), step.script),
            *((("args", i), arg) for i, arg in enumerate(step.args)),
            # A `{secret: name}` value is no template: the activity resolves it.
            *((("env", key), value) for key, value in step.env.items() if isinstance(value, str)),
        ]
    if isinstance(step, SensorStep):
        fields: list[tuple[FieldPath, str]] = [
            ((name,), text) for name, text in (("file", step.file), ("sql", step.sql)) if text
        ]
        if step.upstream is not None:
            fields.append((("upstream", "logical_date"), step.upstream.logical_date))
        return fields
    if isinstance(step, SparkStep | FlinkStep):
        file = (
            ("jar", step.jar) if isinstance(step, FlinkStep) else ("application", step.application)
        )
        return [
            *(((name,), text) for name, text in (file, ("sql", step.sql)) if text is not None),
            *((("args", i), arg) for i, arg in enumerate(step.args)),
        ]
    return []


def template_texts(step: Step) -> list[str]:
    """Every field of a step that is rendered as a template."""
    return [text for _, text in templated_fields(step)]


def referenced_steps(step: Step) -> list[str]:
    """Ids of the steps whose results `step`'s templates use (what the workflow passes it)."""
    texts = [*template_texts(step), *([step.for_each] if step.for_each else [])]
    ids = {ref[0] for text in texts for ref in step_references(text)}
    return sorted(ids)


class _AnyResult(dict[str, Any]):
    """A result whose keys are known only at run time: any key renders as 1 while validating
    (it binds in SQL, renders as text and adds like a number)."""

    def __missing__(self, key: str) -> int:
        return 1


def validation_upstream(outputs: Mapping[str, list[str]]) -> dict[str, UpstreamResult]:
    """What `steps` renders as while validating: any result key, the declared outputs."""
    return {
        step_id: UpstreamResult.model_construct(
            result=_AnyResult(), tables={name: name for name in names}
        )
        for step_id, names in outputs.items()
    }
