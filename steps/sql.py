"""SQL steps: render `{{ ... }}` into bind parameters, run the statements on the engine."""

from __future__ import annotations

from schemas.pipeline import SqlStep
from schemas.templating import render_sql
from steps.base import StepContext, StepResult
from steps.engines.duckdb import DuckDBEngine


class SqlExecutor:
    """Runs a step's SQL script on DuckDB; relative file paths resolve in the pipeline dir."""

    def __init__(self, engine: DuckDBEngine) -> None:
        self.engine = engine

    async def execute(self, step: SqlStep, ctx: StepContext) -> StepResult:
        text, binds = render_sql(step.sql, ctx.run)
        outcome = await self.engine.run_script(text, binds, search_path=ctx.source_dir.resolve())
        return StepResult(
            rows_affected=outcome.rows_affected,
            outputs={"statements": outcome.statements},
        )
