"""Sensor steps: ONE check of the sensor's condition per activity (the workflow loops, see
workflows/sensors.py). The result's `outputs["met"]` says whether the condition holds.

What a check needs from outside the step layer (the object store, the service's runs table)
comes in as `SensorProbes`, built by the worker (pipeline_service/temporal/sensor_probes.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import anyio.to_thread

from schemas.pipeline import SensorStep, SqlStep, UpstreamRun, split_object_url
from schemas.templating import render_text
from steps.base import StepContext, StepError, StepResult, confined_path
from steps.sql import SqlExecutor


@dataclass(frozen=True)
class SensorProbes:
    """Blocking look-ups a check runs in a thread; None: not available on this worker."""

    object_exists: Callable[[str, str], bool] | None = None
    """(store URL `s3://bucket`, key) -> whether the object exists; StorageError if the store
    cannot be asked."""
    run_status: Callable[[str, str, datetime], str | None] | None = None
    """(tenant, pipeline, logical date) -> SUCCEEDED if a run of that date succeeded, else the
    status of its latest run, None without one."""


FALSE_VALUES = frozenset({"", "false", "0", "no", "off", "none"})


def _truthy(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() not in FALSE_VALUES
    return bool(value)


class SensorExecutor:
    def __init__(self, sql: SqlExecutor, probes: SensorProbes | None = None) -> None:
        self.sql = sql
        self.engines = sql.engines  # named connections' secrets (registry.connection_secret_names)
        self.probes = probes or SensorProbes()

    async def execute(self, step: SensorStep, ctx: StepContext) -> StepResult:
        if step.file is not None:
            return await self._file(step.file, ctx)
        if step.upstream is not None:
            return await self._upstream(step.upstream, ctx)
        assert step.sql is not None  # validation: exactly one condition
        return await self._sql(step, ctx)

    async def _file(self, template: str, ctx: StepContext) -> StepResult:
        relative = render_text(template, ctx.run, ctx.upstream)
        if (url := _object_url(template, relative)) is not None:
            return await self._object(relative, *url)
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

    async def _object(self, url: str, store: str, key: str) -> StepResult:
        exists = self.probes.object_exists
        if exists is None:
            raise StepError("this worker cannot reach object stores for sensors", retryable=False)
        found = await anyio.to_thread.run_sync(exists, store, key)
        return StepResult(outputs={"met": found, "file": url})

    async def _upstream(self, upstream: UpstreamRun, ctx: StepContext) -> StepResult:
        status_of = self.probes.run_status
        if status_of is None:
            raise StepError(
                "a sensor on a pipeline's run needs the service's database: run the pipeline on "
                "`laminar worker` (or `laminar run` with --http-port)",
                error_type="SensorUnavailable",
                retryable=False,
            )
        text = render_text(upstream.logical_date, ctx.run, ctx.upstream).strip()
        logical_date = parse_logical_date(text)
        status = await anyio.to_thread.run_sync(
            status_of, ctx.run.tenant, upstream.pipeline, logical_date
        )
        return StepResult(
            outputs={
                "met": status == "SUCCEEDED",
                "pipeline": upstream.pipeline,
                "logical_date": logical_date.isoformat(),
                "status": status,
            }
        )


def _object_url(template: str, rendered: str) -> tuple[str, str] | None:
    """(store, key) of an object URL; the rendered URL must keep the definition's scheme and
    bucket (validation refuses templates there; this holds the rendered value to it)."""
    if "://" not in template:
        return None
    scheme, rest = template.split("://", 1)
    declared = f"{scheme}://{rest.split('/', 1)[0]}"
    try:
        found = split_object_url(rendered)
    except ValueError as exc:
        raise StepError(str(exc), error_type="BadSensorUrl", retryable=False) from None
    if found is None or found[0] != declared.lower():
        raise StepError(
            f"sensor URL {rendered!r} left {declared!r} after rendering",
            error_type="BadSensorUrl",
            retryable=False,
        )
    return found


def parse_logical_date(text: str) -> datetime:
    """An ISO 8601 date-time (UTC without an offset) or a date (midnight UTC)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StepError(
            f"upstream.logical_date rendered to {text!r}: expected an ISO 8601 date-time "
            "(2026-11-23T00:00:00+00:00) or a date (2026-11-23)",
            error_type="BadLogicalDate",
            retryable=False,
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
