"""Step type -> executor, and the one boundary where user-code failures become StepErrors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.connections import Resources, load_resources
from schemas.pipeline import NotificationStep, Step
from schemas.templating import TemplateProblem
from steps.base import StepContext, StepError, StepExecutor, StepResult
from steps.engines.catalog import EngineCatalog
from steps.engines.duckdb import DuckDBEngine
from steps.flink import FlinkExecutor
from steps.flink_job import FlinkOptions
from steps.kubernetes_job import KubernetesJobOptions
from steps.noop import NoopExecutor
from steps.notification import NotificationExecutor
from steps.python_runners import PythonRunners
from steps.python_script import PythonScriptExecutor
from steps.quality import QualityExecutor
from steps.sensor import SensorExecutor, SensorProbes
from steps.spark import SparkExecutor
from steps.spark_submit import SparkOptions
from steps.sql import SqlExecutor

Executors = dict[str, StepExecutor[Any]]


def build_executors(
    engine: DuckDBEngine,
    resources: Resources | None = None,
    *,
    spark: SparkOptions | None = None,
    flink: FlinkOptions | None = None,
    kubernetes: KubernetesJobOptions | None = None,
    sensor_probes: SensorProbes | None = None,
) -> Executors:
    """One executor per step type, sharing the process's engine. Named connections and
    channels come from `resources` (default: the worker's settings, see schemas.connections);
    where Spark, Flink and Kubernetes jobs run, from their options (default: local)."""
    resources = resources if resources is not None else load_resources()
    catalog = EngineCatalog(engine, resources)
    sql = SqlExecutor(catalog)
    executors: Executors = {
        "notification": NotificationExecutor(resources),
        "sql": sql,
        "quality": QualityExecutor(catalog),
        "python": PythonRunners(PythonScriptExecutor(engine), kubernetes_options=kubernetes),
        "spark": SparkExecutor(spark),
        "flink": FlinkExecutor(flink),
        "noop": NoopExecutor(),
        "sensor": SensorExecutor(sql, sensor_probes),
    }
    return executors


def connection_secret_names(executors: Executors, step: Step) -> set[str]:
    """The tenant secrets a step refers to through its connection (`{{ secrets.name }}`)."""
    executor = executors.get(step.type)
    if isinstance(executor, NotificationExecutor) and isinstance(step, NotificationStep):
        return executor.secret_names(step.channel)
    catalog = getattr(executor, "engines", None)
    if not isinstance(catalog, EngineCatalog):
        return set()
    return catalog.secret_names(getattr(step, "connection", None))


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
