"""Cutting a SQL script into statements for engines that take one statement at a time."""

from __future__ import annotations

import sqlglot


def split_statements(text: str, dialect: str) -> list[str]:
    """Statements of a SQL script, cut at top-level semicolons, text kept as written.

    `dialect` is the sqlglot dialect whose quoting rules apply (`spark` for Spark SQL and for
    Flink SQL, which quotes the same way). Pieces holding only comments are dropped (engines
    reject an empty statement).
    """
    tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(text)
    statements, start, has_sql = [], 0, False
    for token in tokens:
        if token.token_type != sqlglot.TokenType.SEMICOLON:
            has_sql = True
            continue
        if has_sql:
            statements.append(text[start : token.start].strip())
        start, has_sql = token.end + 1, False
    if has_sql:
        statements.append(text[start:].strip())
    return statements
