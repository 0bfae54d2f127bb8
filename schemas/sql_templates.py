"""SQL templates: every `{{ ... }}` becomes a bind parameter, wherever the user put it.

Rendering first turns each expression into a named placeholder (`$lam_0`, ...). A placeholder
that lands inside a quoted string would otherwise be stored as its own text (`'$lam_0'`), so
the string is rewritten into a concatenation of its literal parts and binds
(`'in_{{ params.day }}.csv'` -> `('in_' || $lam_0 || '.csv')`, the bind holding the value as
text); a typed literal (`DATE '{{ ds }}'`) becomes a cast of that concatenation. Values never
enter the SQL text. A placeholder inside a name (`{{ x }}_tbl`, `"{{ x }}"`) is refused: names
are built with the `ident` filter, which validates and quotes the name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from jinja2 import StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from sqlglot import Token, TokenType
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import SqlglotError

from schemas.run import RunContext, UpstreamResult
from schemas.templating import (
    RENDER_ERRORS,
    SQL_PARAM_PREFIX,
    IsoDateTime,
    SqlIdentifier,
    TemplateProblem,
    add_filters,
    template_variables,
)

__all__ = ["IDENT_HINT", "INT64_MAX", "INT64_MIN", "render_sql"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
IDENT_HINT = (
    "binds carry values, not names: build a name with {{ ... | ident }}, "
    "e.g. {{ ('sales_' ~ params.day) | ident }}"
)
_NAME_CHARS = re.compile(r"[A-Za-z0-9_$.\"\x80-\U0010ffff]")
_STRING_KINDS = {
    TokenType.BYTE_STRING: "E'...' or b'...' string",
    TokenType.HEREDOC_STRING: "$$...$$ string",
    TokenType.NATIONAL_STRING: "N'...' string",
    TokenType.RAW_STRING: "raw string",
    TokenType.BIT_STRING: "bit string",
    TokenType.HEX_STRING: "hex string",
    TokenType.UNICODE_STRING: "U&'...' string",
}
_TYPE_TOKENS = DuckDB.parser_class.TYPE_TOKENS


class _BindCollector:
    """Jinja `finalize` hook: every `{{ expr }}` output becomes a named bind placeholder."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, Any] = {}
        self.texts: dict[str, str] = {}
        """Each value as text renders it: what it becomes inside a quoted string."""

    def __call__(self, value: Any) -> str:
        if isinstance(value, Undefined):
            str(value)  # raises the undefined-name (or sandbox) error with its real message
        if isinstance(value, SqlIdentifier):
            return str(value)  # validated and quoted by the `ident` filter
        name = f"{self.prefix}{len(self.values)}"
        self.texts[name] = str(value)
        if isinstance(value, IsoDateTime):
            value = datetime.fromisoformat(value.isoformat())
        elif isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                raise TemplateProblem(
                    f"integer {value} does not fit DuckDB's 64-bit integers "
                    f"({INT64_MIN} to {INT64_MAX})"
                )
        elif not isinstance(value, str | float | bool | date | datetime | type(None)):
            raise TemplateProblem(
                f"SQL template values must be scalars, got {type(value).__name__}"
            )
        self.values[name] = value
        return f"${name}"


def _unused_prefix(source: str) -> str:
    """A placeholder prefix the template's own text never contains, so text the user wrote
    (`'$lam_0'`) is never taken for a placeholder."""
    prefix, n = SQL_PARAM_PREFIX, 0
    while prefix in source:
        n += 1
        prefix = f"{SQL_PARAM_PREFIX.rstrip('_')}{n}_"
    return prefix


def render_sql(
    source: str, context: RunContext, upstream: Mapping[str, UpstreamResult] | None = None
) -> tuple[str, dict[str, Any]]:
    """Render SQL: the text with `$lam_N` placeholders, and the bind values by name."""
    collector = _BindCollector(_unused_prefix(source))
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, finalize=collector
    )
    add_filters(env)
    try:
        text = env.from_string(source).render(template_variables(context, upstream, sql=True))
    except TemplateProblem:
        raise
    except RENDER_ERRORS as exc:
        raise TemplateProblem(f"template error: {exc}") from exc
    if not collector.values:
        return text, {}
    return _place_binds(text, collector)


def _place_binds(text: str, collector: _BindCollector) -> tuple[str, dict[str, Any]]:
    """Rewrite quoted strings holding placeholders; refuse placeholders inside names."""
    marker = re.compile(rf"\$({re.escape(collector.prefix)}\d+)")
    try:
        tokens = DuckDB().tokenize(text)
    except SqlglotError as exc:
        raise TemplateProblem(f"cannot tell where the templates land in this SQL: {exc}") from exc
    binds = dict(collector.values)
    edits: list[tuple[int, int, str]] = []  # (start, end inclusive, replacement)
    for i, token in enumerate(tokens):
        previous = tokens[i - 1] if i else None
        if token.token_type == TokenType.STRING and marker.search(token.text):
            expression = _concatenation(token.text, marker, collector, binds)
            if previous is not None and _is_typed_literal(previous, token, text):
                start, type_name = previous.start, previous.text.upper()
                cast = (
                    f"INTERVAL {expression}"
                    if previous.token_type == TokenType.INTERVAL
                    else f"CAST({expression} AS {type_name})"
                )
                edits.append((start, token.end, cast))
            else:
                edits.append((token.start, token.end, expression))
        elif token.token_type in _STRING_KINDS and marker.search(token.text):
            kind = _STRING_KINDS[token.token_type]
            raise TemplateProblem(
                f"a template inside a {kind} cannot be bound: use a plain '...' string"
            )
        elif token.token_type == TokenType.IDENTIFIER and marker.search(token.text):
            raise TemplateProblem(f'a template inside a quoted name "...": {IDENT_HINT}')
        elif token.token_type == TokenType.PARAMETER:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if following is not None and following.start == token.end + 1:
                _check_standalone(text, token, following, collector)
        elif token.token_type == TokenType.VAR and marker.search(token.text):
            raise TemplateProblem(f"a template inside a name ({token.text}): {IDENT_HINT}")
    for start, end, replacement in reversed(edits):
        text = text[:start] + replacement + text[end + 1 :]
    return text, binds


def _concatenation(
    content: str, marker: re.Pattern[str], collector: _BindCollector, binds: dict[str, Any]
) -> str:
    parts: list[str] = []
    for i, piece in enumerate(marker.split(content)):
        if i % 2:  # a placeholder: bind the value as the text it renders to
            binds[piece] = collector.texts[piece]
            parts.append(f"${piece}")
        elif piece:
            parts.append("'" + piece.replace("'", "''") + "'")
    return "(" + " || ".join(parts) + ")"


def _is_typed_literal(previous: Token, token: Token, text: str) -> bool:
    """`DATE '...'`, `TIMESTAMP '...'`, `INTERVAL '...'`: a type name, then the string."""
    between = text[previous.end + 1 : token.start]
    return previous.token_type in _TYPE_TOKENS and between.strip() == ""


def _check_standalone(text: str, dollar: Token, name: Token, collector: _BindCollector) -> None:
    """A placeholder must stand alone: `{{ x }}_tbl` renders as `$lam_0_tbl`."""
    if not name.text.startswith(collector.prefix):
        return
    before = text[dollar.start - 1] if dollar.start else ""
    after = text[name.end + 1] if name.end + 1 < len(text) else ""
    glued = name.text not in collector.values or any(
        c and _NAME_CHARS.fullmatch(c) for c in (before, after)
    )
    if glued:
        raise TemplateProblem(f"a template inside a name: {IDENT_HINT}")
