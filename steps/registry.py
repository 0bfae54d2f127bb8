"""Step type -> executor, and the one boundary where user-code failures become StepErrors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.pipeline import Step
from schemas.templating import TemplateProblem
from steps.base import StepContext, StepError, StepExecutor, StepResult
from steps.engines.duckdb import DuckDBEngine
from steps.noop import NoopExecutor
from steps.python_script import PythonScriptExecutor
from steps.sql import SqlExecutor

Executors = dict[str, StepExecutor[Any]]


def build_executors(engine: DuckDBEngine) -> Executors:
    """One executor per step type, sharing the process's engine."""
    return {
        "sql": SqlExecutor(engine),
        "python": PythonScriptExecutor(engine),
        "noop": NoopExecutor(),
    }


async def execute_step(executors: Executors, step: Step, ctx: StepContext) -> StepResult:
    """Run `step` with its executor. Every failure leaves as a StepError (cause kept)."""
    executor = executors.get(step.type)
    if executor is None:
        raise StepError(
            f"no executor for step type {step.type!r}",
            error_type="UnsupportedStepType",
            retryable=False,
        )
    started_at = datetime.now(UTC)
    try:
        result = await executor.execute(step, ctx)
    except StepError:
        raise
    except TemplateProblem as exc:
        raise StepError(str(exc), error_type="TemplateError", retryable=False) from exc
    except Exception as exc:
        # Unknown failures may be transient (disk, network): let the retry policy decide.
        # The type name lets `retry.non_retryable_errors` single them out.
        raise StepError(
            f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__, retryable=True
        ) from exc
    return result.model_copy(
        update={
            "started_at": result.started_at or started_at,
            "finished_at": result.finished_at or datetime.now(UTC),
            "attempt": ctx.attempt,
        }
    )
