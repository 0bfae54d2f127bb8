"""Checks that need more than one field: step ids, dependencies and cycles, compensations,
templates against the declared params, SQL that parses, scripts inside the pipeline directory.

`schemas.loading` validates each part on its own first, then runs these; problems carry paths
the same way (`steps[2].depends_on: unknown step 'lod'`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from schemas.documents import Problem, did_you_mean, join_path
from schemas.pipeline import PythonStep, SqlStep, Step
from schemas.run import RunContext
from schemas.templating import (
    TemplateProblem,
    check_template,
    is_template,
    render_sql,
    renders_in_bounded_time,
)

__all__ = ["check_pipeline"]

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


class _Problems(list[Problem]):
    def add(self, path: str, message: str) -> None:
        self.append(Problem(path, message))


def check_pipeline(
    raw_steps: list[Any], steps: Mapping[int, Step], params: Mapping[str, Any], source_dir: Path
) -> list[Problem]:
    """Problems of the definition as a whole, step by step and then the step graph.

    `steps` maps positions in `raw_steps` to the steps that validated; `params` has a value for
    every declared param, to render SQL templates with.
    """
    problems = _Problems()
    context = _validation_context(params)
    names = frozenset(params)
    for i, step in steps.items():
        _check_step(f"steps[{i}]", step, names, context, source_dir, problems)
    _check_graph(raw_steps, problems)
    return problems


# --- the step graph ---------------------------------------------------------------------------


def _dependency_cycles(graph: dict[str, set[str]], order: dict[str, int]) -> list[list[str]]:
    """The cycles graphlib finds, breaking each to look for more (graph: step -> its deps)."""
    graph = {node: set(deps) for node, deps in graph.items()}
    cycles: list[list[str]] = []
    while len(cycles) < 20:
        try:
            TopologicalSorter(graph).prepare()
            break
        except CycleError as exc:
            cycle: list[str] = list(exc.args[1])[:-1]
            graph[cycle[1]].discard(cycle[0])  # cycle[0] is a dependency of cycle[1]
            start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
            cycles.append([*cycle[start:], *cycle[:start], cycle[start]])
    return cycles


def _check_graph(raw_steps: list[Any], problems: _Problems) -> None:
    """Ids, dependencies, cycles and compensations, checked on the raw mappings: they need
    only ids and depends_on, so they run even when a step is otherwise invalid."""
    steps = [(i, raw) for i, raw in enumerate(raw_steps) if isinstance(raw, dict)]
    first: dict[str, int] = {}
    for i, raw in steps:
        step_id = raw.get("id")
        if isinstance(step_id, str) and step_id in first:
            problems.add(
                f"steps[{i}].id", f"duplicate step id {step_id!r} (also steps[{first[step_id]}])"
            )
        elif isinstance(step_id, str):
            first[step_id] = i
    graph: dict[str, set[str]] = {step_id: set() for step_id in first}
    unknown = 0
    for i, raw in steps:
        step_id, depends_on = raw.get("id"), raw.get("depends_on")
        if not isinstance(step_id, str) or not isinstance(depends_on, list):
            continue
        for dep in depends_on:
            if not isinstance(dep, str):
                continue
            if dep == step_id:
                problems.add(f"steps[{i}].depends_on", f"step {dep!r} depends on itself")
            elif dep in first:
                graph[step_id].add(dep)
            else:
                unknown += 1  # difflib is quadratic: suggest only for the first hundred
                hint = did_you_mean(dep, first) if unknown <= 100 else ""
                problems.add(f"steps[{i}].depends_on", f"unknown step {dep!r}{hint}")
    for cycle in _dependency_cycles(graph, first):
        problems.add("steps", "dependency cycle " + " -> ".join(cycle))

    compensation_ids: dict[str, str] = {}
    for i, raw in steps:
        compensate, path = raw.get("compensate"), f"steps[{i}].compensate"
        if not isinstance(compensate, dict):
            continue
        if compensate.get("depends_on"):
            problems.add(
                f"{path}.depends_on",
                "a compensation step cannot have depends_on: it runs when its step is undone",
            )
        if compensate.get("compensate") is not None:
            problems.add(f"{path}.compensate", "a compensation step cannot have its own compensate")
        comp_id = compensate.get("id")
        if isinstance(comp_id, str):
            used_by = (
                f"steps[{first[comp_id]}]" if comp_id in first else compensation_ids.get(comp_id)
            )
            if used_by:
                problems.add(f"{path}.id", f"id {comp_id!r} is already used by {used_by}")
            compensation_ids.setdefault(comp_id, path)


# --- step contents ----------------------------------------------------------------------------


def _validation_context(params: Mapping[str, Any]) -> RunContext:
    """A run context to render templates with while validating."""
    moment = datetime(2000, 1, 1, tzinfo=UTC)
    return RunContext(
        pipeline="validation",
        run_id="validation",
        logical_date=moment,
        data_interval_start=moment,
        data_interval_end=moment + timedelta(days=1),
        params=dict(params),
    )


def _templated_fields(path: str, step: Step) -> Iterator[tuple[str, str]]:
    if isinstance(step, SqlStep):
        yield f"{path}.sql", step.sql
    elif isinstance(step, PythonStep):
        yield f"{path}.script", step.script
        for i, arg in enumerate(step.args):
            yield f"{path}.args[{i}]", arg
        for key, value in step.env.items():
            yield join_path(f"{path}.env", key), value


def _sql_problem(sql: str, context: RunContext) -> str | None:
    # Loops, macros and repetition could take unbounded time to render on untrusted input:
    # such templates are checked when the step runs instead.
    if not renders_in_bounded_time(sql):
        return None
    try:
        text, _ = render_sql(sql, context)
        statements = sqlglot.parse(text, read="duckdb")
    except TemplateProblem as exc:
        return str(exc)
    except ParseError as exc:
        error = exc.errors[0] if exc.errors else {}
        where = f" (line {error['line']}, column {error['col']})" if "line" in error else ""
        problem = f"SQL does not parse: {error.get('description', exc)}{where}"
        return None if _duckdb_parses(text) else problem
    except SqlglotError as exc:
        return None if _duckdb_parses(text) else f"SQL does not parse: {exc}"
    except RecursionError:
        return "SQL does not parse: nested too deeply"
    if all(s is None or isinstance(s, exp.Semicolon) for s in statements):
        return "contains no SQL statement"
    return None


def _duckdb_parses(text: str) -> bool:
    """DuckDB's own parser, asked only when sqlglot refuses: sqlglot lags behind DuckDB's
    grammar (it reads `WHERE range < 5` as a type), and DuckDB is the engine that runs it."""
    import duckdb

    with duckdb.connect(":memory:") as connection:
        try:
            connection.extract_statements(text)
        except duckdb.Error:
            return False
    return True


def _script_problem(script: str, source_dir: Path) -> str | None:
    if is_template(script):
        return None  # known only per run; the runner confines the rendered path
    if Path(script).is_absolute():
        return f"must be a path relative to the pipeline directory, got {script!r}"
    try:
        root = source_dir.resolve()
        target = (root / script).resolve()  # follows symlinks: a link out is an escape too
    except (OSError, RuntimeError, ValueError) as exc:
        return f"cannot resolve {script!r}: {exc}"
    if not target.is_relative_to(root):
        return "path escapes the pipeline directory"
    if not target.is_file():
        return f"no such file {script!r} (relative to {root})"
    return None


def _check_step(
    path: str,
    step: Step,
    params: frozenset[str],
    context: RunContext,
    source_dir: Path,
    problems: _Problems,
) -> None:
    bad_templates = set()
    for field_path, text in _templated_fields(path, step):
        for message in check_template(text, params):
            problems.add(field_path, message)
            bad_templates.add(field_path)
    sql_problem = None
    if isinstance(step, SqlStep) and f"{path}.sql" not in bad_templates:
        sql_problem = _sql_problem(step.sql, context)
    if sql_problem:
        problems.add(f"{path}.sql", sql_problem)
    if isinstance(step, PythonStep):
        if script_problem := _script_problem(step.script, source_dir):
            problems.add(f"{path}.script", script_problem)
        for i, table in enumerate(step.inputs):
            if not _TABLE_NAME.fullmatch(table):
                problems.add(
                    f"{path}.inputs[{i}]",
                    f"{table!r} is not a table name (expected name or schema.name)",
                )
    if step.compensate is not None:
        _check_step(f"{path}.compensate", step.compensate, params, context, source_dir, problems)
