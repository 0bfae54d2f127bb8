"""Checks that need more than one field: step ids, dependencies and cycles, compensations,
templates against the declared params, SQL that parses, scripts inside the pipeline directory.

`schemas.loading` validates each part on its own first, then runs these; problems carry paths
the same way (`steps[2].depends_on: unknown step 'lod'`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import sqlglot
from packaging.requirements import InvalidRequirement, Requirement
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from schemas.dialects import TranspileError, colon_placeholders, transpile_script
from schemas.documents import Problem, did_you_mean, join_path
from schemas.handoff_checks import (
    ancestors,
    declared_outputs,
    output_file_problem,
    reference_problems,
    table_name_problem,
    templated_fields,
    validation_upstream,
)
from schemas.pipeline import (
    LOCAL_STEP_MAX_TIMEOUT,
    MAX_FOR_EACH_ITEMS,
    FlinkStep,
    PythonStep,
    QualityStep,
    SparkStep,
    SqlStep,
    Step,
    StepOnFailure,
    TriggerRule,
)
from schemas.quality_validation import quality_problems
from schemas.run import RunContext, UpstreamResult
from schemas.sql_templates import IDENT_HINT, render_sql
from schemas.templating import (
    FOR_EACH_VARIABLES,
    TemplateProblem,
    check_template,
    is_template,
    render_text,
    renders_in_bounded_time,
    single_expression,
    uses_names,
)

__all__ = ["check_pipeline"]

MAX_STEP_ID_LENGTH = 64
"""The longest step id (STEP_ID_PATTERN; step_runs.step_id holds as much)."""


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
    outputs = declared_outputs(steps.values())
    scope = _Scope(
        params=frozenset(params),
        context=_validation_context(params),
        source_dir=source_dir,
        upstream=validation_upstream(outputs),
        ancestors=ancestors(steps.values()),
        outputs=outputs,
    )
    for i, step in steps.items():
        _check_step(f"steps[{i}]", step, step.id, scope, problems)
    _check_output_owners(steps, problems)
    _check_graph(raw_steps, problems)
    return problems


@dataclass(frozen=True)
class _Scope:
    """What checking one step needs of the whole pipeline."""

    params: frozenset[str]
    context: RunContext
    source_dir: Path
    upstream: dict[str, UpstreamResult]
    ancestors: dict[str, set[str]]
    outputs: dict[str, list[str]]


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
    for items, text in templated_fields(step):
        yield join_path(path, *items), text


def _sql_problem(sql: str, context: RunContext, upstream: dict[str, UpstreamResult]) -> str | None:
    # Loops, macros and repetition could take unbounded time to render on untrusted input:
    # such templates are checked when the step runs instead.
    if not renders_in_bounded_time(sql):
        return None
    try:
        text, binds = render_sql(sql, context, upstream)
    except TemplateProblem as exc:
        return str(exc)
    if binds and (problem := _bind_position_problem(text, binds)):
        return problem
    try:
        statements = sqlglot.parse(text, read="duckdb")
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
    # sqlglot falls back to an opaque Command for syntax it does not know: DuckDB decides.
    if any(isinstance(s, exp.Command) for s in statements) and (
        parse_error := _duckdb_parse_error(text)
    ):
        return f"SQL does not parse: {parse_error}"
    return _unbindable_problem(statements)


def _spark_sql_problem(
    sql: str, context: RunContext, upstream: dict[str, UpstreamResult]
) -> str | None:
    """Spark SQL: the same bind rendering, parsed with sqlglot's Spark dialect."""
    if not renders_in_bounded_time(sql):
        return None
    try:
        text, _ = render_sql(sql, context, upstream)
        statements = sqlglot.parse(text, read="spark")
    except TemplateProblem as exc:
        return str(exc)
    except ParseError as exc:
        error = exc.errors[0] if exc.errors else {}
        where = f" (line {error['line']}, column {error['col']})" if "line" in error else ""
        return f"SQL does not parse: {error.get('description', exc)}{where}"
    except SqlglotError as exc:
        return f"SQL does not parse: {exc}"
    except RecursionError:
        return "SQL does not parse: nested too deeply"
    if all(s is None or isinstance(s, exp.Semicolon) for s in statements):
        return "contains no SQL statement"
    return None


def _bind_position_problem(text: str, binds: dict[str, Any]) -> str | None:
    """DuckDB's parser decides where a bind may stand: a template where a name goes
    (`CREATE TABLE {{ x }}`) fails to parse, and parses once its placeholder is a name."""
    if _duckdb_parses(text):
        return None
    as_names = re.sub(r"\$(" + "|".join(map(re.escape, binds)) + r")\b", r"\1", text)
    if _duckdb_parses(as_names):
        return f"a template stands where DuckDB takes no value; {IDENT_HINT}"
    return None  # a plain syntax error: reported below


# DuckDB refuses bind parameters in these statements and clauses (they store SQL text).
_UNBINDABLE_KINDS = frozenset({"VIEW", "MACRO", "FUNCTION", "TABLE MACRO"})


def _unbindable_problem(statements: list[exp.Expr | None]) -> str | None:
    for statement in statements:
        if statement is None or statement.find(exp.Placeholder) is None:
            continue
        kind = str(statement.args.get("kind") or "").upper()
        if isinstance(statement, exp.Create) and kind in _UNBINDABLE_KINDS:
            return (
                f"DuckDB cannot take template values (bind parameters) in CREATE {kind}: "
                "materialize with CREATE TABLE ... AS instead"
            )
        for placeholder in statement.find_all(exp.Placeholder):
            if placeholder.find_ancestor(exp.DefaultColumnConstraint) is not None:
                return (
                    "DuckDB cannot take template values (bind parameters) in a column DEFAULT: "
                    "set the value with INSERT or UPDATE instead"
                )
    return None


def _transpile_problem(
    step: SqlStep, context: RunContext, upstream: dict[str, UpstreamResult]
) -> str | None:
    """SQL in another dialect than its engine's: every statement must transpile, and on
    DuckDB the result must parse (sqlglot passes some constructs through untranslated)."""
    if not renders_in_bounded_time(step.sql):
        return None
    try:
        text, binds = render_sql(step.sql, context, upstream)
        text = colon_placeholders(text, binds)
        statements = transpile_script(text, step.source_dialect, step.engine)
    except TemplateProblem as exc:
        return str(exc)
    except TranspileError as exc:
        return str(exc)
    if step.engine == "duckdb":
        for number, statement in enumerate(statements, 1):
            if not _duckdb_parses(statement):
                return (
                    f"statement {number} cannot be transpiled from {step.source_dialect} to "
                    f"duckdb: DuckDB cannot run the translation {statement[:200]!r}"
                )
    return None


def _duckdb_parses(text: str) -> bool:
    """DuckDB's own parser, asked when sqlglot refuses or gives up: sqlglot lags behind
    DuckDB's grammar (it reads `WHERE range < 5` as a type), and DuckDB runs the SQL."""
    return _duckdb_parse_error(text) is None


def _duckdb_parse_error(text: str) -> str | None:
    import duckdb

    with duckdb.connect(":memory:") as connection:
        try:
            connection.extract_statements(text)
        except duckdb.Error as exc:
            return str(exc).strip().splitlines()[0]
    return None


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


def _check_local_step(path: str, step: Step, problems: _Problems) -> None:
    """What a local activity cannot do: heartbeat, or run long (see LOCAL_STEP_MAX_TIMEOUT)."""
    how = "local: true" if step.local else f"'{step.type}' steps run local by default"
    bound = LOCAL_STEP_MAX_TIMEOUT.total_seconds()
    if step.heartbeat_timeout is not None:
        problems.add(
            f"{path}.heartbeat_timeout",
            f"a local step cannot heartbeat ({how}): remove heartbeat_timeout or set local: false",
        )
    if step.timeout > LOCAL_STEP_MAX_TIMEOUT:  # an unset one is the bound already
        problems.add(
            f"{path}.timeout",
            f"a local step must finish within {bound:g}s ({how}), got "
            f"{step.timeout.total_seconds():g}s: shorten the timeout or set local: false",
        )


def _check_step(path: str, step: Step, owner: str, scope: _Scope, problems: _Problems) -> None:
    """`owner` is the pipeline step whose place in the DAG the step has (a compensation's is
    its step's: it may refer to what its step could, and to its step)."""
    bad_templates = set()
    upstream = scope.ancestors.get(owner, set()) | ({owner} if owner != step.id else set())
    item_names = FOR_EACH_VARIABLES if step.for_each is not None else frozenset()
    for field_path, text in _templated_fields(path, step):
        messages = check_template(text, scope.params, item_names)
        messages += reference_problems(text, step.id, upstream, scope.outputs)
        for message in messages:
            problems.add(field_path, message)
            bad_templates.add(field_path)
        if item_names and uses_names(text, item_names):
            bad_templates.add(field_path)  # the item's shape is known only at run time
            continue
        if field_path in bad_templates or isinstance(step, SqlStep | QualityStep):
            continue
        # Render text templates as the run will (sandbox refusals, type errors), unless
        # rendering could take unbounded time on untrusted input.
        if renders_in_bounded_time(text):
            try:
                render_text(text, scope.context, scope.upstream)
            except TemplateProblem as exc:
                problems.add(field_path, str(exc))
    sql_problem = None
    if isinstance(step, SqlStep) and f"{path}.sql" not in bad_templates:
        if step.engine == "duckdb" and step.source_dialect == "duckdb":
            sql_problem = _sql_problem(step.sql, scope.context, scope.upstream)
        else:
            sql_problem = _transpile_problem(step, scope.context, scope.upstream)
    elif isinstance(step, SparkStep) and step.sql and f"{path}.sql" not in bad_templates:
        sql_problem = _spark_sql_problem(step.sql, scope.context, scope.upstream)
    if sql_problem:
        problems.add(f"{path}.sql", sql_problem)
    if isinstance(step, SparkStep | FlinkStep):
        _check_job_files(path, step, scope.source_dir, problems)
    if isinstance(step, PythonStep):
        _check_python_step(path, step, scope, problems)
    if isinstance(step, QualityStep):
        quality = quality_problems(path, step, scope.params, scope.context, scope.upstream)
        for problem_path, message in quality:
            problems.add(problem_path, message)
    if step.runs_local:
        _check_local_step(path, step, problems)
    _check_control_flow(path, step, step.id != owner, upstream, scope, problems)
    _check_for_each(path, step, step.id != owner, upstream, scope, problems)
    if step.compensate is not None:
        _check_step(f"{path}.compensate", step.compensate, owner, scope, problems)


_RULES_WITHOUT_UPSTREAM = frozenset({TriggerRule.ALL_SUCCESS, TriggerRule.ALL_DONE})


def _check_control_flow(
    path: str,
    step: Step,
    compensation: bool,
    upstream: set[str],
    scope: _Scope,
    problems: _Problems,
) -> None:
    """`trigger_rule`, `when` and `on_failure` of a step."""
    if compensation:
        for name, default in (
            ("trigger_rule", TriggerRule.ALL_SUCCESS),
            ("when", None),
            ("on_failure", StepOnFailure.FAIL),
        ):
            if getattr(step, name) != default:
                problems.add(
                    f"{path}.{name}",
                    f"{name} does not apply to a compensation step (it runs when its step "
                    "is compensated)",
                )
        return
    if step.trigger_rule not in _RULES_WITHOUT_UPSTREAM and not step.depends_on:
        problems.add(
            f"{path}.trigger_rule",
            f"trigger rule '{step.trigger_rule}' decides on upstream steps, and this step has "
            "none: add depends_on",
        )
    if step.when is None:
        return
    messages = check_template(step.when, scope.params)
    messages += reference_problems(step.when, step.id, upstream, scope.outputs)
    if not messages and renders_in_bounded_time(step.when):
        try:
            render_text(step.when, scope.context, scope.upstream)
        except TemplateProblem as exc:
            messages.append(str(exc))
    for message in messages:
        problems.add(f"{path}.when", message)


def _check_for_each(
    path: str,
    step: Step,
    compensation: bool,
    upstream: set[str],
    scope: _Scope,
    problems: _Problems,
) -> None:
    """`for_each`: one expression over params or upstream results; no saga around it."""
    if step.for_each is None:
        return
    if compensation:
        problems.add(f"{path}.for_each", "for_each does not apply to a compensation step")
        return
    longest = len(f"{step.id}[{MAX_FOR_EACH_ITEMS - 1}]")
    if longest > MAX_STEP_ID_LENGTH:
        problems.add(
            f"{path}.id",
            f"a for_each step's id must leave room for its instances' '[<index>]' "
            f"(at most {MAX_STEP_ID_LENGTH - longest + len(step.id)} characters)",
        )
    if step.compensate is not None:
        problems.add(
            f"{path}.compensate",
            "a for_each step cannot have compensate (compensate the work in a later step)",
        )
    if single_expression(step.for_each) is None:
        problems.add(
            f"{path}.for_each",
            "expected one expression that yields a list, like '{{ params.regions }}' or "
            "'{{ steps.list_files.result.files }}'",
        )
        return
    messages = check_template(step.for_each, scope.params)
    messages += reference_problems(step.for_each, step.id, upstream, scope.outputs)
    for message in messages:
        problems.add(f"{path}.for_each", message)


def _check_output_owners(steps: Mapping[int, Step], problems: _Problems) -> None:
    """One step per output table: two would overwrite each other, in parallel or in turn."""
    owner: dict[str, str] = {}
    for i, step in steps.items():
        if not isinstance(step, PythonStep):
            continue
        for table in step.outputs:
            key = table.lower()  # DuckDB matches names case-insensitively, quoted or not
            if key in owner:
                problems.add(
                    join_path(f"steps[{i}].outputs", table),
                    f"table {table!r} is already an output of {owner[key]}",
                )
            else:
                owner[key] = f"steps[{i}]"


def _check_job_files(
    path: str, step: SparkStep | FlinkStep, source_dir: Path, problems: _Problems
) -> None:
    """Applications and jars are files inside the pipeline directory, like scripts."""
    files = (
        [("application", step.application), *((f"jars[{i}]", j) for i, j in enumerate(step.jars))]
        if isinstance(step, SparkStep)
        else [("jar", step.jar)]
    )
    for field, file in files:
        if file is not None and (problem := _script_problem(file, source_dir)):
            problems.add(f"{path}.{field}", problem)


def _requirement_problem(text: str) -> str | None:
    """A PEP 508 requirement naming a package; no URLs (they could fetch anything)."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        return f"not a requirement ({exc}); use e.g. 'requests>=2.31'"
    if requirement.url:
        return "direct URL requirements are not allowed; name a package and its versions"
    return None


def _check_python_step(path: str, step: PythonStep, scope: _Scope, problems: _Problems) -> None:
    if script_problem := _script_problem(step.script, scope.source_dir):
        problems.add(f"{path}.script", script_problem)
    for i, requirement in enumerate(step.requirements):
        if problem := _requirement_problem(requirement):
            problems.add(f"{path}.requirements[{i}]", problem)
    for i, table in enumerate(step.inputs):
        if problem := table_name_problem(table):
            problems.add(f"{path}.inputs[{i}]", problem)
    for table, file in step.outputs.items():
        if problem := table_name_problem(table) or output_file_problem(file):
            problems.add(join_path(f"{path}.outputs", table), problem)
