"""Templates over run context, rendered in a sandbox.

`{{ params.region }}`, `{{ logical_date }}`, `{{ ds }}`, `{{ data_interval_start }}`,
`{{ data_interval_end }}` and `{{ run_id }}` are the only names a template may use. Rendering
happens once: a value that itself looks like a template stays literal text. SQL templates
render in `schemas.sql_templates`, where every `{{ ... }}` becomes a bind parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from schemas.run import RunContext, UpstreamResult

TEMPLATE_VARIABLES = frozenset(
    {
        "params",
        "logical_date",
        "ds",
        "data_interval_start",
        "data_interval_end",
        "run_id",
        "steps",
        "replay",
    }
)
FOR_EACH_VARIABLES = frozenset({"item", "item_index"})
"""Names only the templates of a `for_each` step may use: its instance's item and index."""
STEP_FIELDS = ("result", "outputs")
"""`steps.<id>.result.<key>` (the step's JSON result) and `steps.<id>.outputs.<name>` (the
table its output was loaded into; in SQL a quoted name, spliced like `ident`)."""
SQL_PARAM_PREFIX = "lam_"


class TemplateProblem(ValueError):
    """A template that cannot be parsed, uses an unknown name, or fails to render."""


class IsoDateTime(datetime):
    """A datetime that renders as ISO 8601 (`2026-01-31T00:00:00+00:00`) in text templates."""

    def __str__(self) -> str:
        return self.isoformat()


def _iso(value: datetime) -> IsoDateTime:
    return IsoDateTime.fromisoformat(value.isoformat())


class SqlIdentifier(str):
    """A name the `ident` filter validated and quoted: SQL rendering splices it as text."""


MAX_IDENTIFIER_LENGTH = 255


def identifier_name(value: Any) -> str:
    """The name an `ident` filter quotes, refusing what is no name (the SQL dialect's filter
    does the quoting)."""
    if not isinstance(value, str):
        raise TemplateProblem(f"ident: a name must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_IDENTIFIER_LENGTH or "\x00" in value:
        raise TemplateProblem(
            f"ident: {value[:80]!r} is not a name (1 to {MAX_IDENTIFIER_LENGTH} characters, no NUL)"
        )
    return value


def ident(value: Any) -> SqlIdentifier:
    """`{{ params.table | ident }}`: a double-quoted SQL identifier, refusing what is no name."""
    return SqlIdentifier('"' + identifier_name(value).replace('"', '""') + '"')


def add_filters(env: ImmutableSandboxedEnvironment) -> None:
    env.filters["ident"] = ident


_text_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
add_filters(_text_env)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def _quoted_table(name: str) -> SqlIdentifier:
    return SqlIdentifier(".".join('"' + part.replace('"', '""') + '"' for part in name.split(".")))


def steps_variable(upstream: Mapping[str, UpstreamResult], *, sql: bool) -> dict[str, Any]:
    """The `steps` template variable from upstream results."""
    return {
        step_id: {
            "result": found.result,
            "outputs": {
                name: _quoted_table(table) if sql else table for name, table in found.tables.items()
            },
        }
        for step_id, found in upstream.items()
    }


def template_variables(
    context: RunContext, upstream: Mapping[str, UpstreamResult] | None = None, *, sql: bool = False
) -> dict[str, Any]:
    variables = {
        "steps": steps_variable(upstream or {}, sql=sql),
        "params": dict(context.params),
        "logical_date": _iso(context.logical_date),
        "ds": context.logical_date.date().isoformat(),
        "data_interval_start": _iso(context.data_interval_start),
        "data_interval_end": _iso(context.data_interval_end),
        "run_id": context.run_id,
        # A dead-letter replay run: where its rows are (None otherwise: `{% if replay %}`).
        "replay": context.replay.model_dump(by_alias=True) if context.replay else None,
    }
    if context.item_index is not None:
        variables.update(item=context.item, item_index=context.item_index)
    return variables


# Besides TemplateError, compiling and rendering user templates can raise these (`{{ 1/0 }}`,
# `{{ 'a' - 1 }}`, an integer literal too long to convert, nesting past the recursion limit).
RENDER_ERRORS = (
    TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)


def render_text(
    source: str, context: RunContext, upstream: Mapping[str, UpstreamResult] | None = None
) -> str:
    """Render a text template (args, env values, paths) against the run context."""
    if not is_template(source):
        return source
    try:
        return _text_env.from_string(source).render(template_variables(context, upstream))
    except TemplateProblem:
        raise
    except RENDER_ERRORS as exc:
        raise TemplateProblem(f"template error: {exc}") from exc


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


def step_references(source: str) -> list[tuple[str, str | None, str | None]]:
    """`(step id, field, name)` for each `steps.<id>.<field>.<name>` in a template, in order;
    field and name are None where the template stops short. Empty for unparseable text."""
    if not is_template(source) or "steps" not in source:
        return []
    try:
        ast = _text_env.parse(source)
        found: list[tuple[int, list[str]]] = []
        for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
            chain = _static_chain(node)
            # Only the outermost access of a chain counts (it contains the shorter ones).
            if chain and chain[0] == "steps" and len(chain) >= 2:
                found.append((node.lineno, chain))
    except (TemplateError, ValueError, RecursionError):
        return []
    # `steps.a.result.x` also contains the accesses `steps.a.result` and `steps.a`: keep
    # only chains that no other chain extends, each cut after the name.
    chains = list(dict.fromkeys(tuple(chain[:4]) for _, chain in sorted(found)))
    result: list[tuple[str, str | None, str | None]] = []
    for parts in chains:
        if any(other != parts and other[: len(parts)] == parts for other in chains):
            continue
        padded: list[str | None] = [*parts[1:], None, None]
        result.append((str(padded[0]), padded[1], padded[2]))
    return result


def _static_chain(node: nodes.Node) -> list[str] | None:
    """`steps.a['b'].c` -> ['steps', 'a', 'b', 'c']; None when a part is not a constant."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem):
            if not (isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)):
                return None
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return parts[::-1]
        else:
            return None


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


def check_template(
    source: str,
    declared_params: set[str] | frozenset[str],
    extra_names: frozenset[str] = frozenset(),
) -> list[str]:
    """Problems with a template: syntax, unknown names, unknown `params.x`. Empty when fine.
    `extra_names` are further variables the template may use (`item` in a for_each step).

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
        known = TEMPLATE_VARIABLES | extra_names
        for name in sorted(_undeclared_names(ast) - known):
            if name in FOR_EACH_VARIABLES:
                problems.append(f"'{name}' is only defined in a step with for_each")
                continue
            allowed = ", ".join(sorted(known))
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
        "float", "round", "abs", "length", "ident",
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


_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


def single_expression(source: str) -> str | None:
    """The expression of a template that is one `{{ ... }}` and nothing else, or None."""
    found = _SINGLE_EXPRESSION.match(source)
    if found is None or "{{" in found["expr"] or "}}" in found["expr"]:
        return None
    return found["expr"].strip() or None


def uses_names(source: str, names: frozenset[str]) -> bool:
    """Whether a template reads any of `names` (False for unparseable text)."""
    if not is_template(source):
        return False
    try:
        return bool(_undeclared_names(_text_env.parse(source)) & names)
    except (TemplateError, ValueError, RecursionError):
        return False


def evaluate_expression(
    expression: str, context: RunContext, upstream: Mapping[str, UpstreamResult] | None = None
) -> Any:
    """The value (not its text) of one template expression, in the sandbox."""
    try:
        value = _text_env.compile_expression(expression, undefined_to_none=False)(
            **template_variables(context, upstream)
        )
        if isinstance(value, Undefined):
            str(value)  # StrictUndefined: raises with the missing name
        return value
    except TemplateProblem:
        raise
    except RENDER_ERRORS as exc:
        raise TemplateProblem(f"template error: {exc}") from exc
