"""Sensor steps: ONE check of the sensor's condition per activity (the workflow loops, see
workflows/sensors.py). The result's `outputs["met"]` says whether the condition holds."""

from __future__ import annotations

from typing import Any

from schemas.pipeline import SensorStep, SqlStep
from schemas.templating import render_text
from steps.base import StepContext, StepResult, confined_path
from steps.sql import SqlExecutor

FALSE_VALUES = frozenset({"", "false", "0", "no", "off", "none"})


def _truthy(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() not in FALSE_VALUES
    return bool(value)


class SensorExecutor:
    def __init__(self, sql: SqlExecutor) -> None:
        self.sql = sql
        self.engines = sql.engines  # named connections' secrets (registry.connection_secret_names)

    async def execute(self, step: SensorStep, ctx: StepContext) -> StepResult:
        if step.file is not None:
            return await self._file(step.file, ctx)
        assert step.sql is not None  # validation: exactly one condition
        return await self._sql(step, ctx)

    async def _file(self, template: str, ctx: StepContext) -> StepResult:
        relative = render_text(template, ctx.run, ctx.upstream)
        path = confined_path(
            ctx.source_dir,
            relative,
            "sensor file",
            must_be_file=False,
            error_type="PathOutsidePipeline",
        )
        return StepResult(outputs={"met": path.exists(), "file": relative})

    async def _sql(self, step: SensorStep, ctx: StepContext) -> StepResult:
        query = SqlStep(
            id=step.id,
            type="sql",
            sql=step.sql or "",
            engine=step.engine,
            connection=step.connection,
            preview_rows=1,
        )
        result = await self.sql.execute(query, ctx)
        rows = result.outputs.get("preview", {}).get("rows", [])
        value = rows[0][0] if rows and rows[0] else None
        return StepResult(outputs={"met": _truthy(value), "value": value})
