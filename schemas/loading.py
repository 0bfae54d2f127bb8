"""YAML/JSON -> PipelineDefinition, with size/depth limits and path-precise errors.

Every problem a definition has is reported at once, each with its path
(`steps[2].depends_on: unknown step 'lod'`), so the CLI and the API can show the whole list.
Parsing within limits lives in `schemas.documents`; this module validates the parsed data.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, Literal

import sqlglot
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from schemas.documents import (
    DOCUMENT,
    MAX_DOCUMENT_BYTES,
    PipelineValidationError,
    Problem,
    data_limit_problem,
    document_error,
    parse_document,
)
from schemas.pipeline import (
    STEP_TYPES,
    NoopStep,
    Param,
    ParamSpec,
    ParamType,
    PipelineDefinition,
    PythonStep,
    RetryPolicy,
    SqlStep,
    Step,
)
from schemas.run import RunContext
from schemas.templating import (
    TemplateProblem,
    check_template,
    is_template,
    render_sql,
    renders_in_bounded_time,
)

__all__ = [
    "DOCUMENT",
    "PipelineValidationError",
    "Problem",
    "coerce_param",
    "load_pipeline_file",
    "load_pipeline_text",
    "parse_document",
    "resolve_params",
    "validate_pipeline",
]

MAX_REPORTED_PROBLEMS = 1000


class _Problems(list[Problem]):
    def add(self, path: str, message: str) -> None:
        self.append(Problem(path, message))


def load_pipeline_text(
    text: str, *, source_dir: Path, fmt: Literal["yaml", "json"] = "yaml"
) -> PipelineDefinition:
    """Parse and validate a definition; scripts resolve relative to `source_dir`."""
    return validate_pipeline(parse_document(text, fmt), source_dir=source_dir)


def load_pipeline_file(path: Path) -> PipelineDefinition:
    """Load `pipeline.yaml` (or `.json`); its directory is the pipeline's source directory."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise document_error(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise document_error(f"document is larger than 1 MiB ({MAX_DOCUMENT_BYTES} bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise document_error(f"document is not UTF-8 (bad byte at offset {exc.start})") from None
    fmt: Literal["yaml", "json"] = "json" if path.suffix.lower() == ".json" else "yaml"
    return load_pipeline_text(text, source_dir=path.parent.resolve(), fmt=fmt)


# --- paths and messages -----------------------------------------------------------------------

_PATH_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_STEP_MODELS: dict[str, type[BaseModel]] = {"sql": SqlStep, "python": PythonStep, "noop": NoopStep}
_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}


def _join(path: str, *items: str | int) -> str:
    """`_join("steps", 2, "env", "REGION")` -> `steps[2].env.REGION`."""
    for item in items:
        if isinstance(item, int):
            path += f"[{item}]"
        elif _PATH_KEY.fullmatch(item):
            path = f"{path}.{item}" if path else item
        else:
            path += f"[{json.dumps(item)}]"
    return path


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, date):
        return "date-time" if isinstance(value, datetime) else "date"
    return _KINDS.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    """`string 'abc'`, `integer 5`, `list`: short, whatever the value's size."""
    if isinstance(value, str | int | float | bool | date):
        text = value.isoformat() if isinstance(value, date) else repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        return f"{_kind(value)} {text}"
    return _kind(value)


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _error_problem(
    path: str, loc: Iterable[str | int], err: ErrorDetails, model: type[BaseModel] | None
) -> Problem:
    """One pydantic error as a Problem; `loc` is already stripped of union tags and `model`
    is the model that owns the field at `loc` (for did-you-mean on unknown fields)."""
    loc = list(loc)
    kind, value, ctx = err["type"], err["input"], err.get("ctx", {})
    expected = ", ".join(STEP_TYPES)
    if kind == "union_tag_invalid":
        tag = value.get("type") if isinstance(value, dict) else ctx.get("tag")
        loc, message = [*loc, "type"], f"unknown step type {tag!r} (expected one of: {expected})"
    elif kind == "union_tag_not_found":
        loc, message = [*loc, "type"], f"step type is missing (expected one of: {expected})"
    elif kind == "extra_forbidden":
        message = "unknown field"
        if model is not None and loc and isinstance(loc[-1], str):
            message += _did_you_mean(loc[-1], model.model_fields)
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
    elif kind in ("model_attributes_type", "model_type", "dict_type"):
        message = f"expected a mapping, got {_describe(value)}"
    elif kind == "list_type":
        message = f"expected a list, got {_describe(value)}"
    elif kind == "string_type":
        message = f"expected a string, got {_describe(value)}"
    elif isinstance(value, str | int | float | bool | date) or value is None:
        message = f"{err['msg']}, got {_describe(value)}"
    else:
        message = err["msg"]
    return Problem(_join(path, *loc), message)


def _step_error_problem(path: str, err: ErrorDetails) -> Problem:
    """Strip the discriminator tags pydantic puts in `loc`: ('sql', 'compensate', 'noop', 'x')
    is `compensate.x`."""
    loc, i, model = err["loc"], 0, None
    out: list[str | int] = []
    while i < len(loc) and isinstance(loc[i], str) and loc[i] in _STEP_MODELS:
        model = _STEP_MODELS[str(loc[i])]
        i += 1
        if i + 1 < len(loc) and loc[i] == "compensate":  # a step position follows
            out.append("compensate")
            i += 1
        else:
            break
    rest = loc[i:]
    owner = model if len(rest) == 1 else None
    if model is not None and len(rest) == 2 and rest[0] == "retry":
        owner = RetryPolicy
    return _error_problem(path, [*out, *rest], err, owner)


# --- parameters -------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
_TYPE_NAMES = {
    ParamType.STRING: "a string",
    ParamType.INTEGER: "an integer",
    ParamType.NUMBER: "a number",
    ParamType.BOOLEAN: "a boolean (true/false/yes/no/1/0)",
    ParamType.DATE: "a date (YYYY-MM-DD)",
}


def coerce_param(value: Any, kind: ParamType, *, parse_text: bool) -> Any:
    """`value` as the declared type; `parse_text` also accepts text (CLI `k=v`).

    Dates are accepted as ISO text either way (JSON has no date type).
    """
    text = value.strip() if isinstance(value, str) else None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    parse = text if parse_text else None
    if kind is ParamType.STRING and text is not None:
        return value
    if kind is ParamType.INTEGER:
        if numeric and isinstance(value, int):
            return value
        if parse is not None and _INTEGER_TEXT.fullmatch(parse) and len(parse) < 4000:
            return int(parse)
    if kind is ParamType.NUMBER:
        number = None
        if numeric and abs(value) < 1e308:
            number = float(value)
        elif parse is not None and _NUMBER_TEXT.fullmatch(parse):
            number = float(parse)
        if number is not None and math.isfinite(number):
            return number
    if kind is ParamType.BOOLEAN:
        if isinstance(value, bool):
            return value
        if parse is not None and parse.lower() in _TRUE | _FALSE:
            return parse.lower() in _TRUE
    if kind is ParamType.DATE:
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        try:
            return date.fromisoformat(text or "")
        except ValueError:
            pass
    raise ValueError(f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}")


_PARAM_ADAPTER: TypeAdapter[ParamSpec] = TypeAdapter(Param)


def _check_params(raw: Any, problems: _Problems) -> dict[str, ParamSpec]:
    if not isinstance(raw, dict):
        return {}  # the top-level validation reports it
    specs: dict[str, ParamSpec] = {}
    for name, value in raw.items():
        path = _join("params", str(name))
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            problems.add(path, "param name must be an identifier (letters, digits and _)")
        try:
            spec = _PARAM_ADAPTER.validate_python(value)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                if err["loc"][:1] == ("default",):  # one error per member of the value union
                    problems.add(f"{path}.default", "must be a string, number, boolean or date")
                else:
                    problems.append(_error_problem(path, err["loc"], err, ParamSpec))
            continue
        if spec.default is not None:
            try:
                coerce_param(spec.default, spec.type, parse_text=False)
            except ValueError as exc:
                problems.add(f"{path}.default", str(exc))
        specs[str(name)] = spec
    return specs


def resolve_params(pipeline: PipelineDefinition, overrides: dict[str, Any]) -> dict[str, Any]:
    """Declared defaults merged with a run's overrides, each coerced to its declared type.

    Raises PipelineValidationError for unknown names, bad values and missing required params.
    """
    problems = _Problems()
    for name in overrides:
        if name not in pipeline.params:
            problems.add(
                _join("params", name), f"unknown param{_did_you_mean(name, pipeline.params)}"
            )
    resolved: dict[str, Any] = {}
    for name, spec in pipeline.params.items():
        given = overrides.get(name)
        value = given if given is not None else spec.default
        if value is None:
            if spec.required:
                problems.add(_join("params", name), "required param has no value")
            resolved[name] = None
            continue
        try:
            resolved[name] = coerce_param(value, spec.type, parse_text=given is not None)
        except ValueError as exc:
            problems.add(_join("params", name), str(exc))
    if problems:
        raise PipelineValidationError(problems)
    return resolved


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
                hint = _did_you_mean(dep, first) if unknown <= 100 else ""
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

_PLACEHOLDERS: dict[ParamType, Any] = {
    ParamType.STRING: "x",
    ParamType.INTEGER: 1,
    ParamType.NUMBER: 1.0,
    ParamType.BOOLEAN: True,
    ParamType.DATE: date(2000, 1, 1),
}


def _validation_context(names: Iterable[str], specs: dict[str, ParamSpec]) -> RunContext:
    """A run context to render templates with while validating: defaults, else placeholders."""
    params: dict[str, Any] = {}
    for name in names:
        spec = specs.get(name)
        params[name] = _PLACEHOLDERS[spec.type] if spec else "x"
        if spec is not None and spec.default is not None:
            with contextlib.suppress(ValueError):  # _check_params reports it
                params[name] = coerce_param(spec.default, spec.type, parse_text=False)
    moment = datetime(2000, 1, 1, tzinfo=UTC)
    return RunContext(
        pipeline="validation",
        run_id="validation",
        logical_date=moment,
        data_interval_start=moment,
        data_interval_end=moment + timedelta(days=1),
        params=params,
    )


def _templated_fields(path: str, step: Step) -> Iterator[tuple[str, str]]:
    if isinstance(step, SqlStep):
        yield f"{path}.sql", step.sql
    elif isinstance(step, PythonStep):
        yield f"{path}.script", step.script
        for i, arg in enumerate(step.args):
            yield f"{path}.args[{i}]", arg
        for key, value in step.env.items():
            yield _join(f"{path}.env", key), value


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


# --- the whole definition ---------------------------------------------------------------------

_STEP_ADAPTER: TypeAdapter[Step] = TypeAdapter(Step)
_STEP_INDEX = re.compile(r"steps\[(\d+)\]")


def _ordered(problems: list[Problem]) -> list[Problem]:
    """Document problems first, then top-level fields, then step by step; no duplicates."""

    def key(problem: Problem) -> tuple[int, int]:
        if problem.path == DOCUMENT:
            return (0, 0)
        match = _STEP_INDEX.match(problem.path)
        return (2, int(match.group(1))) if match else (1, 0)

    unique = sorted(dict.fromkeys(problems), key=key)
    if len(unique) > MAX_REPORTED_PROBLEMS:
        more = len(unique) - MAX_REPORTED_PROBLEMS
        unique = [*unique[:MAX_REPORTED_PROBLEMS], Problem(DOCUMENT, f"and {more} more problems")]
    return unique


def validate_pipeline(data: Any, *, source_dir: Path) -> PipelineDefinition:
    """Validate parsed data (a YAML document, a JSON request body) into a definition.

    Raises PipelineValidationError listing every problem found, each with its path.
    """
    if limit := data_limit_problem(data):
        raise document_error(limit)
    if not isinstance(data, dict):
        raise document_error(f"top level must be a mapping, got {_kind(data)}")

    problems = _Problems()
    pipeline: PipelineDefinition | None = None
    try:
        pipeline = PipelineDefinition.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            # Steps and params are validated one by one below, for precise errors.
            if err["loc"][:1] not in (("steps",), ("params",)) or len(err["loc"]) == 1:
                problems.append(_error_problem("", err["loc"], err, PipelineDefinition))

    raw_params = data.get("params")
    specs = _check_params(raw_params, problems)
    # Names whose spec is broken still count as declared, so templates using them pass.
    names = (
        frozenset(str(name) for name in raw_params) if isinstance(raw_params, dict) else frozenset()
    )
    context = _validation_context(names, specs)
    raw_steps: list[Any] = data["steps"] if isinstance(data.get("steps"), list) else []
    for i, raw in enumerate(raw_steps):
        try:
            step = _STEP_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            problems.extend(
                _step_error_problem(f"steps[{i}]", err) for err in exc.errors(include_url=False)
            )
        else:
            _check_step(f"steps[{i}]", step, names, context, source_dir, problems)
    _check_graph(raw_steps, problems)

    if problems:
        raise PipelineValidationError(_ordered(problems))
    if pipeline is None:  # not expected: every error above became a problem
        pipeline = PipelineDefinition.model_validate(data)
    return pipeline
