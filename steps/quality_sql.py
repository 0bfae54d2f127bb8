"""Quality checks compiled to SQL as sqlglot expressions, for the engine's dialect.

Names from the definition (tables, columns) become quoted identifiers built as AST nodes;
values (accepted values, bounds, run ids, reasons) become placeholders bound positionally.
Nothing from the definition is formatted into SQL text, so a column named `a"; DROP TABLE x`
is a strange column, not a statement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp

from schemas.dialects import BoundStatement, SqlDialect, bind_positional
from schemas.quality import (
    AcceptedValuesCheck,
    Check,
    CustomSqlCheck,
    ExpressionCheck,
    NotNullCheck,
    RangeCheck,
    ReferentialCheck,
    UniqueCheck,
)

SRC = "s"
"""Alias of the checked source in every check query."""
AUDIT_COLUMNS = ("_laminar_run_id", "_laminar_check", "_laminar_reason", "_laminar_at")


class CheckCompileError(ValueError):
    """A check's SQL (expression, custom_sql, query) that does not parse in its dialect."""


@dataclass
class Binder:
    """Collects values for named placeholders; `bound()` turns an expression into SQL."""

    dialect: SqlDialect
    values: dict[str, Any] = field(default_factory=dict)

    def value(self, value: Any) -> exp.Placeholder:
        name = f"qv_{len(self.values)}"
        self.values[name] = value
        return exp.Placeholder(this=name)

    def bound(self, expression: exp.Expr) -> BoundStatement:
        return bind_positional(expression.sql(dialect=self.dialect), self.values, self.dialect)


def ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def table_ref(name: str) -> exp.Table:
    """`a`, `s.a` or `c.s.a` as a table of quoted identifiers (never parsed as SQL)."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 3 or any(not p for p in parts):
        raise CheckCompileError(f"invalid table name {name!r}")
    parts = [""] * (3 - len(parts)) + parts
    catalog, db, table = parts
    return exp.Table(
        this=ident(table),
        db=ident(db) if db else None,
        catalog=ident(catalog) if catalog else None,
    )


def col(name: str, table: str = SRC) -> exp.Column:
    return exp.Column(this=ident(name), table=exp.to_identifier(table))


def parse_sql(text: str, dialect: SqlDialect, what: str) -> exp.Expr:
    try:
        parsed = sqlglot.parse_one(text, read=dialect)
    except (sqlglot.errors.SqlglotError, RecursionError) as exc:
        raise CheckCompileError(f"{what} does not parse as {dialect}: {exc}") from exc
    return parsed


def parse_query(text: str, dialect: SqlDialect, what: str) -> exp.Query:
    parsed = parse_sql(text, dialect, what)
    if not isinstance(parsed, exp.Query):
        raise CheckCompileError(f"{what} must be a query (SELECT ...)")
    return parsed


def source(table: str | None, query: exp.Query | None, alias: str = SRC) -> exp.Expr:
    if query is not None:
        return exp.Subquery(this=query.copy(), alias=exp.TableAlias(this=exp.to_identifier(alias)))
    assert table is not None
    ref = table_ref(table)
    ref.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    return ref


@dataclass(frozen=True)
class RowCheck:
    """A row-level check as (where its rows come from, the condition a failing row meets)."""

    source: exp.Expr
    condition: exp.Expr
    reason: str
    aggregable: bool
    """True when the condition can be counted in the one shared scan of the source."""


def row_check(
    check: Check, src: exp.Expr, binder: Binder, dialect: SqlDialect, ref_source: Any
) -> RowCheck:
    """The failing-row condition of a row-level check."""
    if isinstance(check, NotNullCheck):
        return RowCheck(
            src,
            exp.Is(this=col(check.column), expression=exp.Null()),
            f"{check.column} is null",
            True,
        )
    if isinstance(check, AcceptedValuesCheck):
        values = [binder.value(v) for v in check.values]
        cond = exp.and_(
            exp.not_(exp.Is(this=col(check.column), expression=exp.Null())),
            exp.not_(exp.In(this=col(check.column), expressions=values)),
        )
        return RowCheck(src, cond, f"{check.column} is not an accepted value", True)
    if isinstance(check, RangeCheck):
        parts: list[exp.Expr] = []
        if check.min is not None:
            parts.append(exp.LT(this=col(check.column), expression=binder.value(check.min)))
        if check.max is not None:
            parts.append(exp.GT(this=col(check.column), expression=binder.value(check.max)))
        bounds = f"[{'' if check.min is None else check.min}, "
        bounds += f"{'' if check.max is None else check.max}]"
        return RowCheck(src, exp.or_(*parts), f"{check.column} outside {bounds}", True)
    if isinstance(check, ExpressionCheck):
        predicate = parse_sql(check.expression, dialect, "expression")
        cond = exp.not_(exp.Coalesce(this=exp.paren(predicate), expressions=[exp.false()]))
        return RowCheck(src, cond, f"expression is not true: {check.expression[:200]}", True)
    if isinstance(check, UniqueCheck):
        inner = source(ref_source[0], ref_source[1], alias="d")
        keys = [col(c, "d") for c in check.columns]
        duplicates = (
            exp.select(*keys)
            .from_(inner)
            .where(
                exp.and_(*[exp.not_(exp.Is(this=k.copy(), expression=exp.Null())) for k in keys])
            )
            .group_by(*[k.copy() for k in keys])
            .having(exp.GT(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(1)))
        )
        mine = [col(c) for c in check.columns]
        target = mine[0] if len(mine) == 1 else exp.Tuple(expressions=mine)
        cond = exp.In(this=target, query=exp.Subquery(this=duplicates))
        return RowCheck(src, cond, f"duplicate key ({', '.join(check.columns)})", False)
    if isinstance(check, ReferentialCheck):
        ref = table_ref(check.to_table)
        ref.set("alias", exp.TableAlias(this=exp.to_identifier("r")))
        match = (
            exp.select(exp.Literal.number(1))
            .from_(ref)
            .where(exp.EQ(this=col(check.to_column, "r"), expression=col(check.column)))
        )
        cond = exp.and_(
            exp.not_(exp.Is(this=col(check.column), expression=exp.Null())),
            exp.not_(exp.Exists(this=match)),
        )
        reason = f"{check.column} has no match in {check.to_table}.{check.to_column}"
        return RowCheck(src, cond, reason, False)
    if isinstance(check, CustomSqlCheck):
        query = parse_query(check.sql, dialect, "custom_sql")
        return RowCheck(source(None, query), exp.true(), "returned by custom_sql", False)
    raise CheckCompileError(f"{check.type} is not a row-level check")


def count_where(row: RowCheck) -> exp.Select:
    return (
        exp.select(exp.Count(this=exp.Star())).from_(row.source.copy()).where(row.condition.copy())
    )


def sample_where(row: RowCheck, limit: int) -> exp.Select:
    star = exp.Column(this=exp.Star(), table=exp.to_identifier(SRC))
    return exp.select(star).from_(row.source.copy()).where(row.condition.copy()).limit(limit)


def counted(condition: exp.Expr, alias: str) -> exp.Expr:
    """`count(*) FILTER (WHERE condition)`: many checks share one scan of the source."""
    return exp.alias_(
        exp.Filter(this=exp.Count(this=exp.Star()), expression=exp.Where(this=condition.copy())),
        alias,
    )


def quarantine_statements(
    row: RowCheck, table: exp.Table, binder: Binder, audit: tuple[Any, ...]
) -> list[exp.Expr]:
    """Create the quarantine table like the source plus audit columns, drop this run's earlier
    rows for the check (a retry must not add them twice), insert the failing rows."""
    star = exp.Column(this=exp.Star(), table=exp.to_identifier(SRC))
    typed_nulls = [
        exp.alias_(exp.cast(exp.Null(), "VARCHAR"), name, quoted=True) for name in AUDIT_COLUMNS
    ]
    create = exp.Create(
        this=table.copy(),
        kind="TABLE",
        exists=True,
        expression=exp.select(star, *typed_nulls).from_(row.source.copy()).where(exp.false()),
    )
    delete = exp.delete(
        table.copy(),
        where=exp.EQ(this=exp.column(ident(AUDIT_COLUMNS[0])), expression=binder.value(audit[0])),
    )
    values = [exp.cast(binder.value(v), "VARCHAR") for v in audit]
    insert = exp.insert(
        exp.select(star.copy(), *values).from_(row.source.copy()).where(row.condition.copy()),
        table.copy(),
    )
    return [create, delete, insert]
