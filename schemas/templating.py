"""Templates over run context, rendered in a sandbox.

`{{ params.region }}`, `{{ logical_date }}`, `{{ ds }}`, `{{ data_interval_start }}`,
`{{ data_interval_end }}` and `{{ run_id }}` are the only names a template may use. Rendering
happens once: a value that itself looks like a template stays literal text. In SQL every
`{{ ... }}` becomes a bind parameter (`$lam_0`, ...), so values never reach the SQL text.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from schemas.run import RunContext

TEMPLATE_VARIABLES = frozenset(
    {"params", "logical_date", "ds", "data_interval_start", "data_interval_end", "run_id"}
)
SQL_PARAM_PREFIX = "lam_"


class TemplateProblem(ValueError):
    """A template that cannot be parsed, uses an unknown name, or fails to render."""


class IsoDateTime(datetime):
    """A datetime that renders as ISO 8601 (`2026-01-31T00:00:00+00:00`) in text templates."""

    def __str__(self) -> str:
        return self.isoformat()


def _iso(value: datetime) -> IsoDateTime:
    return IsoDateTime.fromisoformat(value.isoformat())


_text_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def template_variables(context: RunContext) -> dict[str, Any]:
    return {
        "params": dict(context.params),
        "logical_date": _iso(context.logical_date),
        "ds": context.logical_date.date().isoformat(),
        "data_interval_start": _iso(context.data_interval_start),
        "data_interval_end": _iso(context.data_interval_end),
        "run_id": context.run_id,
    }


# Besides TemplateError, compiling and rendering user templates can raise these (`{{ 1/0 }}`,
# `{{ 'a' - 1 }}`, an integer literal too long to convert, nesting past the recursion limit).
_RENDER_ERRORS = (
    TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)


def render_text(source: str, context: RunContext) -> str:
    """Render a text template (args, env values, paths) against the run context."""
    if not is_template(source):
        return source
    try:
        return _text_env.from_string(source).render(template_variables(context))
    except TemplateProblem:
        raise
    except _RENDER_ERRORS as exc:
        raise TemplateProblem(f"template error: {exc}") from exc


class _BindCollector:
    """Jinja `finalize` hook: every `{{ expr }}` output becomes a named bind placeholder."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        name = f"{SQL_PARAM_PREFIX}{len(self.values)}"
        if isinstance(value, Undefined):
            str(value)  # raises the undefined-name (or sandbox) error with its real message
        if isinstance(value, IsoDateTime):
            value = datetime.fromisoformat(value.isoformat())
        elif not isinstance(value, str | int | float | bool | date | datetime | type(None)):
            raise TemplateProblem(
                f"SQL template values must be scalars, got {type(value).__name__}"
            )
        self.values[name] = value
        return f"${name}"


def render_sql(source: str, context: RunContext) -> tuple[str, dict[str, Any]]:
    """Render SQL: returns the text with `$lam_N` placeholders and the bind values by name."""
    collector = _BindCollector()
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, finalize=collector
    )
    try:
        text = env.from_string(source).render(template_variables(context))
    except TemplateProblem:
        raise
    except _RENDER_ERRORS as exc:
        raise TemplateProblem(f"template error: {exc}") from exc
    return text, collector.values


def _params_references(ast: nodes.Template) -> Iterator[str]:
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and _is_params(node.node):
            yield node.attr
        elif (
            isinstance(node, nodes.Getitem)
            and _is_params(node.node)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            yield node.arg.value


def _is_params(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "params"


# Names a template may use without declaring them: Jinja's own loop/macro names and the
# environment's globals (range, dict, ...).
_IMPLICIT_NAMES = frozenset({"loop", "caller", "varargs", "kwargs", "self", "super"}) | frozenset(
    _text_env.globals
)


_REFERENCE_NODES = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def _undeclared_names(ast: nodes.Template) -> set[str]:
    # A static walk instead of jinja2.meta.find_undeclared_variables: that one runs the code
    # generator, which folds constants at compile time, so `{{ 'a'|center(10**9) }}` would
    # allocate a gigabyte while merely being checked.
    loads: set[str] = set()
    stores: set[str] = set()
    for node in ast.find_all(nodes.Name):
        (loads if node.ctx == "load" else stores).add(node.name)
    stores.update(macro.name for macro in ast.find_all(nodes.Macro))
    return loads - stores - _IMPLICIT_NAMES


def check_template(source: str, declared_params: set[str] | frozenset[str]) -> list[str]:
    """Problems with a template: syntax, unknown names, unknown `params.x`. Empty when fine.

    Only parses, never compiles or renders, so it is cheap for any input.
    """
    if not is_template(source):
        return []
    try:
        ast = _text_env.parse(source)
    except TemplateError as exc:
        return [f"template syntax error: {exc}"]
    except ValueError as exc:  # an integer literal longer than int() accepts
        return [f"template syntax error: {exc}"]
    except RecursionError:
        return ["template nests too deeply"]
    problems = []
    try:
        if next(ast.find_all(_REFERENCE_NODES), None) is not None:
            problems.append("templates cannot include, import or extend other templates")
        for name in sorted(_undeclared_names(ast) - TEMPLATE_VARIABLES):
            allowed = ", ".join(sorted(TEMPLATE_VARIABLES))
            problems.append(f"unknown template variable '{name}' (available: {allowed})")
        for param in sorted(set(_params_references(ast)) - set(declared_params)):
            problems.append(f"unknown param '{param}' in template (declare it under params:)")
    except RecursionError:
        return ["template nests too deeply"]
    return problems


# Template constructs whose rendering time is linear in the template's size. Loops, macros,
# calls, `{% set %}` (x = x ~ x doubles), `*`, `**`, `%` and most filters are not.
_BOUNDED_NODES = frozenset(
    {
        nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Const,
        nodes.Getattr, nodes.Getitem, nodes.Slice, nodes.If, nodes.CondExpr, nodes.Compare,
        nodes.Operand, nodes.And, nodes.Or, nodes.Not, nodes.Neg, nodes.Pos, nodes.Concat,
        nodes.Add, nodes.Sub, nodes.Div, nodes.FloorDiv, nodes.Tuple, nodes.List, nodes.Test,
        nodes.Filter, nodes.Keyword,
    }
)  # fmt: skip
_BOUNDED_FILTERS = frozenset(
    {
        "upper", "lower", "trim", "title", "capitalize", "default", "d", "string", "int",
        "float", "round", "abs", "length",
    }
)  # fmt: skip


def renders_in_bounded_time(source: str) -> bool:
    """True when rendering `source` costs time linear in its size (safe on untrusted input)."""
    if not is_template(source):
        return True
    try:
        ast = _text_env.parse(source)
        return all(
            type(node) in _BOUNDED_NODES
            and (not isinstance(node, nodes.Filter) or node.name in _BOUNDED_FILTERS)
            for node in ast.find_all(nodes.Node)
        )
    except (TemplateError, ValueError, RecursionError):
        return False
