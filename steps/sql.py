"""SQL steps: render `{{ ... }}` into bind parameters, run the statements on the step's engine.

SQL in the engine's own dialect on DuckDB goes to DuckDB's parser untouched (sqlglot lags
behind DuckDB's grammar). Any other pairing goes through sqlglot: the script is split and
transpiled statement by statement, template values staying bind parameters.
"""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from schemas.dialects import (
    BoundStatement,
    SqlDialect,
    TranspileError,
    colon_placeholders,
    transpile_script,
)
from schemas.dialects import bind_positional as bind
from schemas.pipeline import SqlStep
from schemas.sql_templates import render_sql
from steps.base import StepContext, StepError, StepResult
from steps.engines.base import StatementResult
from steps.engines.catalog import EngineCatalog
from steps.engines.duckdb import DuckDBEngine


class SqlExecutor:
    """Runs a step's SQL script; relative file paths resolve in the pipeline dir (DuckDB)."""

    def __init__(self, engines: EngineCatalog | DuckDBEngine) -> None:
        self.engines = engines if isinstance(engines, EngineCatalog) else EngineCatalog(engines)

    async def execute(self, step: SqlStep, ctx: StepContext) -> StepResult:
        engine = self.engines.get(step.engine, step.connection, ctx.secrets)
        source_dialect = step.source_dialect
        if isinstance(engine, DuckDBEngine) and source_dialect == "duckdb":
            text, binds = render_sql(step.sql, ctx.run, ctx.upstream)
            outcome = await engine.run_script(
                text, binds, search_path=ctx.source_dir.resolve(), fetch_rows=step.preview_rows
            )
            return await self._result(
                step, engine, outcome.statements, outcome.rows_affected, outcome.last, text
            )
        text, binds = render_sql(step.sql, ctx.run, ctx.upstream)
        text = colon_placeholders(text, binds)
        try:
            statements = transpile_script(text, source_dialect, engine.dialect)
        except TranspileError as exc:
            raise StepError(str(exc), error_type="SqlError", retryable=False) from exc
        if isinstance(engine, DuckDBEngine):
            script = ";\n".join(statements)
            outcome = await engine.run_script(
                script, binds, search_path=ctx.source_dir.resolve(), fetch_rows=step.preview_rows
            )
            return await self._result(
                step, engine, outcome.statements, outcome.rows_affected, outcome.last, script
            )
        bound = [bind(s, binds, engine.dialect) for s in statements]
        results = await engine.run_statements(bound, fetch_rows=step.preview_rows)
        counts = [r.rows_affected for r in results if r.rows_affected is not None]
        return await self._result(
            step,
            engine,
            len(results),
            sum(counts) if counts else None,
            results[-1] if results else None,
            ";\n".join(statements),
        )

    async def _result(
        self,
        step: SqlStep,
        engine: Any,
        statements: int,
        rows_affected: int | None,
        last: StatementResult | None,
        script: str,
    ) -> StepResult:
        outputs: dict[str, Any] = {"statements": statements, "engine": step.engine}
        if step.connection:
            outputs["connection"] = step.connection
        table = output_table(script, engine.dialect)
        if table:
            outputs["output_table"] = table
        if step.preview_rows:
            if last is not None and last.columns:
                outputs["preview"] = last.preview()
            elif table:
                outputs["preview"] = await _table_preview(engine, table, step.preview_rows)
        return StepResult(rows_affected=rows_affected, outputs=outputs)


def output_table(script: str, dialect: SqlDialect) -> str | None:
    """The table the script's last writing statement creates or inserts into, if sqlglot can
    tell (it is a report, not a rule: None when it cannot)."""
    try:
        statements = sqlglot.parse(script, read=dialect)
    except (SqlglotError, RecursionError):
        return None
    for statement in reversed(statements):
        if isinstance(statement, exp.Create | exp.Insert | exp.Merge):
            target = statement.this
            table = target if isinstance(target, exp.Table) else target.find(exp.Table)
            if table is not None:
                return ".".join(part.name for part in table.parts)
    return None


def target_tables(script: str, dialect: SqlDialect) -> list[str]:
    """Every table the script's statements create or write (`CREATE`, `INSERT`, `UPDATE`,
    `DELETE`, `MERGE`), as written; empty when sqlglot cannot parse it."""
    try:
        statements = sqlglot.parse(script, read=dialect)
    except (SqlglotError, RecursionError):
        return []
    found: list[str] = []
    for statement in statements:
        if isinstance(statement, exp.Create) and statement.kind != "TABLE":
            continue  # a schema, view, macro...: no rows to hand over
        if isinstance(statement, exp.Create | exp.Insert | exp.Update | exp.Delete | exp.Merge):
            target = statement.this
            table = target if isinstance(target, exp.Table) else target.find(exp.Table)
            if table is not None:
                found.append(".".join(part.name for part in table.parts))
    return found


def referenced_tables(script: str, dialect: SqlDialect) -> set[str] | None:
    """Every table name the script mentions (read or written), lower-cased and without a
    `main.` schema; None when sqlglot cannot parse it (then any table may be read)."""
    try:
        statements = sqlglot.parse(script, read=dialect)
    except (SqlglotError, RecursionError):
        return None
    found: set[str] = set()
    for statement in statements:
        if statement is None:
            continue
        for table in statement.find_all(exp.Table):
            name = ".".join(part.name for part in table.parts).lower()
            found.add(name.removeprefix("main."))
    return found


async def _table_preview(engine: Any, table: str, rows: int) -> dict[str, Any]:
    query = exp.select("*").from_(exp.to_table(table, dialect=engine.dialect)).limit(rows)
    statement = BoundStatement(query.sql(dialect=engine.dialect, identify=True), [])
    (result,) = await engine.run_statements([statement], fetch_rows=rows, atomic=False)
    return result.preview()  # type: ignore[no-any-return]
