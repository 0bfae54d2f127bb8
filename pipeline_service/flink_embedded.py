"""`laminar run` and Flink: a local session cluster while a pipeline with Flink steps runs.

Only pipelines with a Flink step start one (a pipeline without needs no Java), and only when no
cluster is configured (`LAMINAR_FLINK__REST_URL`). Its JVMs are our children: they stop with
the run, and die with us on a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from pipeline_service.cluster import ClusterError
from pipeline_service.settings import FlinkSettings
from schemas.pipeline import FlinkStep, PipelineDefinition, Step
from steps.flink_job import FlinkOptions
from steps.flink_local import FlinkNotInstalled, LocalFlinkCluster


def has_flink_steps(pipeline: PipelineDefinition) -> bool:
    def flink(step: Step | None) -> bool:
        return step is not None and (isinstance(step, FlinkStep) or flink(step.compensate))

    return any(flink(step) for step in pipeline.steps)


@contextlib.asynccontextmanager
async def flink_for(pipeline: PipelineDefinition, state_dir: Path) -> AsyncIterator[FlinkOptions]:
    """The Flink options for this run, with a local cluster started for it if one is needed."""
    settings = FlinkSettings()
    if settings.rest_url is not None or not has_flink_steps(pipeline):
        yield settings.options()
        return
    try:
        cluster = LocalFlinkCluster(settings.tool_dir, state_dir / "flink")
    except FlinkNotInstalled as exc:
        raise ClusterError(f"pipeline '{pipeline.name}' has Flink steps. {exc}") from exc
    await asyncio.to_thread(cluster.start)
    try:
        yield settings.options(rest_url=cluster.rest_url)
    finally:
        await asyncio.to_thread(cluster.stop)
