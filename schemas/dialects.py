"""SQL dialects: split a script written in one dialect into statements for another engine.

A step may be written in Trino's dialect and run on DuckDB for local development: sqlglot
transpiles each statement, and a statement it cannot carry over is reported (at validation,
with its number) rather than run half-translated. Template values stay bind parameters
throughout: SQL is rendered with named `:lam_N` placeholders (which every dialect sqlglot reads
parses as placeholders), and each engine gets them in the form it binds.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel, SqlglotError
from sqlglot.tokenizer_core import TokenType

# sqlglot logs a warning for each statement it keeps as raw text; transpile_script reports
# those itself, as a problem with a path, so the log line would only be noise on a terminal.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

SqlDialect = Literal["duckdb", "trino"]
SQL_DIALECTS: tuple[SqlDialect, ...] = ("duckdb", "trino")


class TranspileError(ValueError):
    """A statement that cannot be read in its dialect or written in the engine's."""


@dataclass(frozen=True)
class BoundStatement:
    """One statement in the engine's dialect with `?` placeholders and their values in order."""

    sql: str
    params: list[Any]


def transpile_script(text: str, read: SqlDialect, write: SqlDialect) -> list[str]:
    """Each statement of `text` (dialect `read`) written for `write`. TranspileError names the
    first statement (1-based) that does not parse or uses what `write` cannot express."""
    try:
        statements = sqlglot.parse(text, read=read)
    except SqlglotError as exc:
        raise TranspileError(f"SQL does not parse as {read}: {_first_line(exc)}") from exc
    except RecursionError as exc:
        raise TranspileError("SQL nests too deeply") from exc
    out: list[str] = []
    number = 0
    for statement in statements:
        if statement is None or isinstance(statement, exp.Semicolon):
            continue
        number += 1
        if isinstance(statement, exp.Command) and read == write:
            # Same dialect: the engine itself parses it (CALL, SET SESSION, ANALYZE ...).
            out.append(statement.sql(dialect=write))
            continue
        if isinstance(statement, exp.Command):
            # sqlglot keeps what it does not understand as raw text: passing it on would run
            # the source dialect's syntax on the other engine.
            raise TranspileError(
                f"statement {number} cannot be transpiled from {read} to {write}: "
                f"sqlglot does not understand {statement.name!r} statements"
            )
        try:
            out.append(statement.sql(dialect=write, unsupported_level=ErrorLevel.RAISE))
        except SqlglotError as exc:
            raise TranspileError(
                f"statement {number} cannot be transpiled from {read} to {write}: "
                f"{_first_line(exc)}"
            ) from exc
    if not out:
        raise TranspileError("contains no SQL statement")
    return out


_MARKERS = frozenset({TokenType.COLON, TokenType.PARAMETER})


def _replace_placeholders(
    sql: str, names: Mapping[str, Any], dialect: SqlDialect, replace: Callable[[str], str]
) -> str:
    """Replace each `:name` / `$name` placeholder (outside string literals and quoted names)
    whose name is in `names` by `replace(name)`, found with `dialect`'s tokenizer."""
    tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    pieces: list[str] = []
    cursor = 0
    for before, token in itertools.pairwise(tokens):
        if (
            before.token_type in _MARKERS
            and token.token_type == TokenType.VAR
            and before.end + 1 == token.start
            and token.text in names
        ):
            pieces.append(sql[cursor : before.start])
            pieces.append(replace(token.text))
            cursor = token.end + 1
    pieces.append(sql[cursor:])
    return "".join(pieces)


def colon_placeholders(sql: str, binds: Mapping[str, Any]) -> str:
    """Rendered SQL's `$name` binds as `:name`, the form sqlglot reads as a placeholder in
    every dialect (Trino's reads `$name` as a column)."""
    if not binds:
        return sql
    return _replace_placeholders(sql, binds, "duckdb", lambda name: f":{name}")


def bind_positional(sql: str, binds: Mapping[str, Any], dialect: SqlDialect) -> BoundStatement:
    """Replace `:name` / `$name` placeholders by `?`, with the values of `binds` in text
    order: both engines bind positionally."""
    params: list[Any] = []

    def take(name: str) -> str:
        params.append(binds[name])
        return "?"

    return BoundStatement(_replace_placeholders(sql, binds, dialect, take), params)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
