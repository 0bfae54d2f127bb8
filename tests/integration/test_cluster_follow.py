"""`laminar run` following a run: a stop signal that races the run's end reports the outcome."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from temporalio.client import Client, WorkflowHandle

from pipeline_service.cluster import ClusterOptions
from pipeline_service.cluster_run import PipelineCluster
from tests.integration.scripted import ScriptedExecutor, pipeline, run_input, worker_for
from workflows.pipeline_run import PipelineRunWorkflow


class LaggingResult:
    """The real handle, except that its result arrives a second late, as a long poll can."""

    def __init__(self, handle: WorkflowHandle[Any, Any]) -> None:
        self._handle = handle
        self.id = handle.id

    async def result(self) -> Any:
        await asyncio.sleep(1.0)
        return await self._handle.result()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


async def test_stop_signal_racing_the_end_of_the_run_reports_its_outcome(
    client: Client, tmp_path: Path
) -> None:
    definition = pipeline([{"id": "a"}, {"id": "b", "depends_on": ["a"]}])
    queue = f"follow-{uuid.uuid4()}"
    async with worker_for(client, ScriptedExecutor(), tmp_path, queue):
        handle = await client.start_workflow(
            PipelineRunWorkflow.run,
            run_input(definition, f"test/follow/{uuid.uuid4()}"),
            id=f"test/follow/{uuid.uuid4()}",
            task_queue=queue,
        )
        await handle.result()
        out = io.StringIO()
        cluster = PipelineCluster(
            definition, tmp_path, ClusterOptions(state_dir=tmp_path, once=True), Console(file=out)
        )
        cluster._stop.set()  # Ctrl-C: arrived just as the run finished
        code = await cluster._follow(LaggingResult(handle))  # type: ignore[arg-type]
    assert code == 0, out.getvalue()
    assert "run SUCCEEDED" in out.getvalue()
