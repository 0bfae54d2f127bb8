"""Sensor steps in the workflow: check (one short activity), sleep `poke_interval` on a durable
timer, repeat until the condition holds or the sensor's timeout has passed (reschedule mode:
no worker slot is held between checks). At the timeout the step fails with what it waited for
and how long."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.names import RUN_STEP
    from schemas.pipeline import SensorStep
    from schemas.run import RunStepInput, StepResult

SENSORS_PATCH = "sensors"
"""Patch id: sensor steps loop in the workflow (runs started before knew no sensor steps)."""
SENSOR_TIMEOUT = "SensorTimeout"


def describe(step: SensorStep, last: dict[str, Any] | None = None) -> str:
    """What the sensor waits for, for its timeout error (`last`: the last check's outputs,
    which carry the rendered object URL or logical date)."""
    last = last or {}
    if step.file is not None:
        if "://" in step.file:
            return f"object {last.get('file', step.file)!r} to appear"
        return f"file {step.file!r} to appear in the pipeline directory"
    if step.upstream is not None:
        date = last.get("logical_date", step.upstream.logical_date)
        seen = last.get("status")
        latest = f" (latest run: {seen})" if seen else " (no run yet)" if last else ""
        return (
            f"the run of pipeline {step.upstream.pipeline!r} for logical date {date} "
            f"to succeed{latest}"
        )
    where = f"connection {step.connection!r}" if step.connection else step.engine
    return f"query on {where} to return true: {step.sql!r}"


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():g}s"


async def wait(step: SensorStep, input: RunStepInput) -> StepResult:
    """Check until the condition holds; ApplicationError(SensorTimeout) at the timeout."""
    started = workflow.now()
    deadline = started + step.timeout
    retry = TemporalRetryPolicy(
        maximum_attempts=step.retry.max_attempts,
        initial_interval=step.retry.initial_interval,
        non_retryable_error_types=step.retry.non_retryable_errors or None,
    )
    checks = 0
    while True:
        checks += 1
        result: StepResult = await workflow.execute_activity(
            RUN_STEP,
            input,
            result_type=StepResult,
            activity_id=f"{step.id}#check{checks}",
            start_to_close_timeout=step.check_timeout,
            retry_policy=retry,
        )
        now = workflow.now()
        if result.outputs.get("met"):
            outputs = {**result.outputs, "checks": checks}
            outputs["waited_seconds"] = (now - started).total_seconds()
            return result.model_copy(update={"outputs": outputs, "started_at": started})
        if now >= deadline:
            raise ApplicationError(
                f"sensor timed out after {_seconds(now - started)} (timeout "
                f"{_seconds(step.timeout)}, {checks} checks every {_seconds(step.poke_interval)})"
                f" waiting for {describe(step, result.outputs)}",
                type=SENSOR_TIMEOUT,
                non_retryable=True,
            )
        await workflow.sleep(min(step.poke_interval, deadline - now))
