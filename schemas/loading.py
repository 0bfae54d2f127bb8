"""YAML/JSON -> PipelineDefinition, with size/depth limits and path-precise errors.

Every problem a definition has is reported at once, each with its path
(`steps[2].depends_on: unknown step 'lod'`), so the CLI and the API can show the whole list.
Parsing within limits lives in `schemas.documents`; this module validates each part of the
parsed data, and `schemas.checks` the rules that need the whole definition.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from schemas.checks import check_pipeline
from schemas.documents import (
    DOCUMENT,
    MAX_DOCUMENT_BYTES,
    PipelineValidationError,
    Problem,
    data_limit_problem,
    did_you_mean,
    document_error,
    join_path,
    parse_document,
)
from schemas.pipeline import (
    STEP_MODELS,
    STEP_TYPES,
    Param,
    ParamSpec,
    ParamType,
    PipelineDefinition,
    RetryPolicy,
    Step,
    notification_problems,
)
from schemas.quality import CHECK_TYPES
from schemas.sql_templates import INT64_MAX, INT64_MIN
from schemas.triggers import trigger_problems

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

_STEP_MODELS: dict[str, type[BaseModel]] = dict(STEP_MODELS)
_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}


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


def _error_problem(
    path: str, loc: Iterable[str | int], err: ErrorDetails, model: type[BaseModel] | None
) -> Problem:
    """One pydantic error as a Problem; `loc` is already stripped of union tags and `model`
    is the model that owns the field at `loc` (for did-you-mean on unknown fields)."""
    loc = [part for part in loc if part != "[key]"]  # a bad mapping key: the path is the key
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
            message += did_you_mean(loc[-1], model.model_fields)
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
    return Problem(join_path(path, *loc), message)


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
    rest = _strip_check_tags(loc[i:])
    if err["type"] in ("union_tag_invalid", "union_tag_not_found") and _is_check(rest):
        return _check_tag_problem(path, rest, err)
    owner = model if len(rest) == 1 else None
    if model is not None and len(rest) == 2 and rest[0] == "retry":
        owner = RetryPolicy
    return _error_problem(path, [*out, *rest], err, owner)


def _strip_check_tags(loc: Sequence[str | int]) -> list[str | int]:
    """A quality step's `checks[3]` is a union too: ('checks', 3, 'unique', 'x') is
    `checks[3].x`."""
    out = list(loc)
    if len(out) >= 3 and out[0] == "checks" and isinstance(out[1], int):
        del out[2]
    return out


def _is_check(loc: Sequence[str | int]) -> bool:
    return len(loc) == 2 and loc[0] == "checks" and isinstance(loc[1], int)


def _check_tag_problem(path: str, loc: Sequence[str | int], err: ErrorDetails) -> Problem:
    expected = ", ".join(CHECK_TYPES)
    value = err["input"]
    if err["type"] == "union_tag_not_found":
        return Problem(join_path(path, *loc, "type"), f"check type is missing ({expected})")
    tag = value.get("type") if isinstance(value, dict) else None
    return Problem(
        join_path(path, *loc, "type"), f"unknown check type {tag!r} (expected one of: {expected})"
    )


# --- parameters -------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
_TYPE_NAMES = {
    ParamType.STRING: "a string",
    ParamType.INTEGER: "an integer",
    ParamType.NUMBER: "a number",
    ParamType.BOOLEAN: "a boolean (true/false/yes/no/1/0)",
    ParamType.DATE: "a date (YYYY-MM-DD)",
    ParamType.LIST: "a list (JSON, or comma-separated text on the command line)",
}


def coerce_param(value: Any, kind: ParamType, *, parse_text: bool) -> Any:
    """`value` as the declared type, JSON-ready; `parse_text` also accepts text (CLI `k=v`).

    Dates are accepted as ISO text either way and returned as `YYYY-MM-DD` text: run params
    travel through Temporal as JSON, so steps and validation see the same value.
    """
    text = value.strip() if isinstance(value, str) else None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    parse = text if parse_text else None
    if kind is ParamType.STRING and text is not None:
        return value
    if kind is ParamType.INTEGER:
        integer = None
        if numeric and isinstance(value, int):
            integer = value
        elif parse is not None and _INTEGER_TEXT.fullmatch(parse) and len(parse) < 4000:
            integer = int(parse)
        if integer is not None:
            if not INT64_MIN <= integer <= INT64_MAX:
                raise ValueError(
                    f"integer out of range (DuckDB takes 64-bit integers: {INT64_MIN} to "
                    f"{INT64_MAX})"
                )
            return integer
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
    if kind is ParamType.LIST:
        items = _list_param(value, parse)
        if items is not None:
            return items
    if kind is ParamType.DATE:
        day = value if isinstance(value, date) and not isinstance(value, datetime) else None
        if day is None:
            with contextlib.suppress(ValueError):
                day = date.fromisoformat(text or "")
        if day is not None:
            return day.isoformat()
    raise ValueError(f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}")


def _list_param(value: Any, parse: str | None) -> list[Any] | None:
    """A list param's value: a JSON list; as text, JSON (`["eu","us"]`) or `eu,us`."""
    items: Any = None
    if isinstance(value, list):
        items = value
    elif parse is not None:
        if parse.startswith("["):
            with contextlib.suppress(ValueError):
                items = json.loads(parse)
        else:
            items = [part.strip() for part in parse.split(",") if part.strip()]
    if not isinstance(items, list):
        return None
    try:  # JSON-ready: the value travels through Temporal as JSON
        return list(json.loads(json.dumps(items, allow_nan=False)))
    except (TypeError, ValueError):
        return None


_PARAM_ADAPTER: TypeAdapter[ParamSpec] = TypeAdapter(Param)


def _check_params(raw: Any, problems: _Problems) -> dict[str, ParamSpec]:
    if not isinstance(raw, dict):
        return {}  # the top-level validation reports it
    specs: dict[str, ParamSpec] = {}
    for name, value in raw.items():
        path = join_path("params", str(name))
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            problems.add(path, "param name must be an identifier (letters, digits and _)")
        try:
            spec = _PARAM_ADAPTER.validate_python(value)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                if err["loc"][:1] == ("default",):  # one error per member of the value union
                    problems.add(
                        f"{path}.default", "must be a string, number, boolean, date or list"
                    )
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


_PLACEHOLDERS: dict[ParamType, Any] = {
    ParamType.STRING: "x",
    ParamType.INTEGER: 1,
    ParamType.NUMBER: 1.0,
    ParamType.BOOLEAN: True,
    ParamType.DATE: "2000-01-01",
    ParamType.LIST: ["x"],
}


def _validation_params(names: Iterable[str], specs: dict[str, ParamSpec]) -> dict[str, Any]:
    """Params to render templates with while validating: defaults, else placeholders."""
    params: dict[str, Any] = {}
    for name in names:
        spec = specs.get(name)
        params[name] = _PLACEHOLDERS[spec.type] if spec else "x"
        if spec is not None and spec.default is not None:
            with contextlib.suppress(ValueError):  # _check_params reports it
                params[name] = coerce_param(spec.default, spec.type, parse_text=False)
    return params


def resolve_params(pipeline: PipelineDefinition, overrides: dict[str, Any]) -> dict[str, Any]:
    """Declared defaults merged with a run's overrides, each coerced to its declared type.

    Raises PipelineValidationError for unknown names, bad values and missing required params.
    """
    problems = _Problems()
    for name in overrides:
        if name not in pipeline.params:
            problems.add(
                join_path("params", name), f"unknown param{did_you_mean(name, pipeline.params)}"
            )
    resolved: dict[str, Any] = {}
    for name, spec in pipeline.params.items():
        given = overrides.get(name)
        value = given if given is not None else spec.default
        if value is None:
            if spec.required:
                problems.add(join_path("params", name), "required param has no value")
            resolved[name] = None
            continue
        try:
            resolved[name] = coerce_param(value, spec.type, parse_text=given is not None)
        except ValueError as exc:
            problems.add(join_path("params", name), str(exc))
    if problems:
        raise PipelineValidationError(problems)
    return resolved


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
    raw_steps: list[Any] = data["steps"] if isinstance(data.get("steps"), list) else []
    steps: dict[int, Step] = {}
    for i, raw in enumerate(raw_steps):
        try:
            steps[i] = _STEP_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            problems.extend(
                _step_error_problem(f"steps[{i}]", err) for err in exc.errors(include_url=False)
            )
    problems.extend(check_pipeline(raw_steps, steps, _validation_params(names, specs), source_dir))
    if pipeline is not None:
        problems.extend(trigger_problems(pipeline))
        for path, message in notification_problems(pipeline):
            problems.add(path, message)

    if problems:
        raise PipelineValidationError(_ordered(problems))
    if pipeline is None:  # not expected: every error above became a problem
        pipeline = PipelineDefinition.model_validate(data)
    return pipeline
