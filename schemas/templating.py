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

from jinja2 import StrictUndefined, TemplateError, nodes
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


def render_text(source: str, context: RunContext) -> str:
    """Render a text template (args, env values, paths) against the run context."""
    if not is_template(source):
        return source
    try:
        return _text_env.from_string(source).render(template_variables(context))
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc}") from exc


class _BindCollector:
    """Jinja `finalize` hook: every `{{ expr }}` output becomes a named bind placeholder."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        name = f"{SQL_PARAM_PREFIX}{len(self.values)}"
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
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc}") from exc
    return text, collector.values


def _params_references(ast: nodes.Template) -> Iterator[str]:
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if isinstance(target, nodes.Name) and target.name == "params":
            if isinstance(node, nodes.Getattr):
                yield node.attr
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                yield node.arg.value


def check_template(source: str, declared_params: set[str] | frozenset[str]) -> list[str]:
    """Problems with a template: syntax, unknown names, unknown `params.x`. Empty when fine."""
    if not is_template(source):
        return []
    try:
        ast = _text_env.parse(source)
    except TemplateError as exc:
        return [f"template syntax error: {exc}"]
    from jinja2 import meta

    problems = []
    for name in sorted(meta.find_undeclared_variables(ast) - TEMPLATE_VARIABLES):
        allowed = ", ".join(sorted(TEMPLATE_VARIABLES))
        problems.append(f"unknown template variable '{name}' (available: {allowed})")
    for param in sorted(set(_params_references(ast)) - set(declared_params)):
        problems.append(f"unknown param '{param}' in template (declare it under params:)")
    return problems
