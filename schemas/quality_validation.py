"""Whole-definition checks of `quality` steps: their SQL parses in the step's dialect, their
query template uses known names. Called by `schemas.checks` with the step's path."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from schemas.dialects import colon_placeholders
from schemas.pipeline import QualityStep
from schemas.quality import CustomSqlCheck, ExpressionCheck
from schemas.run import RunContext, UpstreamResult
from schemas.sql_templates import render_sql
from schemas.templating import TemplateProblem, check_template, renders_in_bounded_time


def quality_problems(
    path: str,
    step: QualityStep,
    params: frozenset[str],
    context: RunContext,
    upstream: Mapping[str, UpstreamResult] | None = None,
) -> Iterator[tuple[str, str]]:
    """(path, message) for each problem of a quality step's SQL."""
    dialect = step.source_dialect
    # The query's template names are checked with every other template (schemas.checks).
    query = step.query
    if query is not None and not check_template(query, params) and renders_in_bounded_time(query):
        try:
            text, binds = render_sql(query, context, upstream)
            text = colon_placeholders(text, binds)
        except TemplateProblem as exc:
            yield f"{path}.query", str(exc)
        else:
            if problem := _parse_problem(text, dialect, want_query=True):
                yield f"{path}.query", problem
    for i, check in enumerate(step.checks):
        if isinstance(check, ExpressionCheck):
            if problem := _parse_problem(check.expression, dialect, want_query=False):
                yield f"{path}.checks[{i}].expression", problem
        elif isinstance(check, CustomSqlCheck) and (
            problem := _parse_problem(check.sql, dialect, want_query=True)
        ):
            yield f"{path}.checks[{i}].sql", problem


def _parse_problem(text: str, dialect: str, *, want_query: bool) -> str | None:
    try:
        statements = [s for s in sqlglot.parse(text, read=dialect) if s is not None]
    except (SqlglotError, RecursionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid SQL"
        return f"does not parse as {dialect}: {first}"
    if len(statements) != 1:
        return f"must be one {'query' if want_query else 'expression'}, found {len(statements)}"
    (statement,) = statements
    if want_query and not isinstance(statement, exp.Query):
        return "must be a query (SELECT ...)"
    if not want_query and isinstance(statement, exp.Query | exp.Command | exp.DDL | exp.DML):
        return "must be a boolean expression over one row, not a statement"
    return None
