"""Worker assembly: PipelineRunWorkflow plus the step activities, on one task queue."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from activities.steps import HEARTBEAT_EVERY, StepActivities
from steps.engines.duckdb import DuckDBEngine
from steps.registry import build_executors
from workflows.pipeline_run import PipelineRunWorkflow


def build_worker(
    client: Client,
    *,
    task_queue: str,
    engine: DuckDBEngine,
    work_root: Path,
    max_concurrent_activities: int = 32,
    graceful_shutdown: timedelta = timedelta(seconds=10),
    sticky_timeout: timedelta = timedelta(seconds=10),
) -> Worker:
    """A worker running pipeline workflows and their steps.

    `sticky_timeout` is how long the server waits for this worker before handing a cached
    workflow's next task to another worker; `laminar run` keeps it short because its previous
    worker is known to be gone after a restart.
    """
    activities = StepActivities(build_executors(engine), work_root, client)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[PipelineRunWorkflow],
        activities=[activities.run_step],
        max_concurrent_activities=max_concurrent_activities,
        graceful_shutdown_timeout=graceful_shutdown,
        sticky_queue_schedule_to_start_timeout=sticky_timeout,
        # Heartbeats carry cancellations back; the SDK's default throttle (up to 80% of the
        # heartbeat timeout) would delay a run's cancel by tens of seconds.
        max_heartbeat_throttle_interval=HEARTBEAT_EVERY,
        default_heartbeat_throttle_interval=HEARTBEAT_EVERY,
    )
