"""Worker assembly: PipelineRunWorkflow plus the step activities, on one task queue."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.artifacts import ArtifactStore
from activities.backfill import BackfillActivities
from activities.dependencies import DependencyActivities, DownstreamNotifier
from activities.pools import PoolActivities
from activities.recording import AttemptRecorder, RecordingActivities
from activities.scheduling import ScheduleActivities
from activities.steps import (
    HEARTBEAT_EVERY,
    LOG_UPLOAD_EVERY,
    BundleResolver,
    SecretResolver,
    StepActivities,
)
from pipeline_service.bundles import BundleError, bundle_dir
from pipeline_service.db.models import Tenant
from pipeline_service.metrics import StepMetrics
from pipeline_service.secrets.crypto import SecretBox
from pipeline_service.secrets.store import resolve_secrets
from pipeline_service.settings import (
    FlinkSettings,
    KubernetesJobSettings,
    SparkSettings,
    WorkflowSettings,
)
from pipeline_service.temporal.sensor_probes import sensor_probes
from steps.engines.duckdb import DuckDBEngine
from steps.flink_job import FlinkOptions
from steps.registry import build_executors
from steps.spark_submit import SparkOptions
from workflows.backfill import BackfillWorkflow
from workflows.dependency_gate import DependencyGateWorkflow
from workflows.pipeline_run import PipelineRunWorkflow
from workflows.schedule import PipelineScheduleWorkflow


@cache
def build_id() -> str:
    """This worker's build id. Left unset, the SDK derives one by hashing the code of every
    loaded module: ~0.15 s of `laminar run`'s start-up, for an id nothing here uses (no worker
    versioning)."""
    try:
        return f"laminar-{importlib.metadata.version('laminar')}"
    except importlib.metadata.PackageNotFoundError:
        return "laminar-dev"


def build_worker(
    client: Client,
    *,
    task_queue: str,
    engine: DuckDBEngine,
    work_root: Path,
    max_concurrent_activities: int = 32,
    graceful_shutdown: timedelta = timedelta(seconds=10),
    sticky_timeout: timedelta = timedelta(seconds=10),
    sessions: sessionmaker[Session] | None = None,
    metrics: StepMetrics | None = None,
    spark: SparkOptions | None = None,
    flink: FlinkOptions | None = None,
    source_dir: Path | None = None,
    secret_key: str | None = None,
    bundle_cache: Path | None = None,
    artifacts: ArtifactStore | None = None,
    log_upload_every: timedelta = LOG_UPLOAD_EVERY,
    s3_endpoint: str | None = None,
    attempts: AttemptRecorder | None = None,
    sandbox: bool | None = None,
) -> Worker:
    """A worker running pipeline workflows and their steps.

    `sticky_timeout` is how long the server waits for this worker before handing a cached
    workflow's next task to another worker; `laminar run` keeps it short because its previous
    worker is known to be gone after a restart. With `sessions` (the service database) the
    worker records the state of runs started with `record` on; with `secret_key` too it
    resolves the tenant secrets steps reference; with `source_dir` too it also runs the
    pipelines' schedulers, backfills and dependency gates (they start runs through the launcher).
    With `artifacts` (LAMINAR_ARTIFACT_URL) step logs and DuckDB hand-off tables go through it.
    `s3_endpoint` is for sensors on s3:// objects (an S3-compatible store). `attempts`: the
    recorder of step attempts (made here if not given), for a caller that flushes it at stop.
    `sandbox`: run workflows in the SDK's sandbox (default: LAMINAR_WORKFLOW_SANDBOX, off; see
    `workflow_runner`).
    """
    # LAMINAR_SPARK__* and LAMINAR_FLINK__* from the environment unless given.
    spark = spark or SparkSettings().options()
    flink = flink or FlinkSettings().options()
    kubernetes = KubernetesJobSettings().options()
    probes = sensor_probes(sessions, s3_endpoint)
    executors = build_executors(
        engine, spark=spark, flink=flink, kubernetes=kubernetes, sensor_probes=probes
    )
    secrets = (
        secret_resolver(sessions, secret_key)
        if sessions is not None and secret_key is not None
        else None
    )
    bundles = (
        bundle_resolver(sessions, bundle_cache or work_root / "bundles")
        if sessions is not None
        else None
    )
    # Steps of recorded runs hand their attempts' transitions to this (one per worker).
    if attempts is None and sessions is not None:
        attempts = AttemptRecorder(sessions, metrics)
    activities = StepActivities(
        executors,
        work_root,
        client,
        secrets,
        bundles,
        engine,
        artifacts=artifacts,
        log_upload_every=log_upload_every,
        record_attempts=attempts.submit if attempts is not None else None,
    )
    pools = PoolActivities(sessions)
    registered: list[Callable[..., Any]] = [
        activities.run_step,
        pools.acquire_pool_slot,
        pools.release_pool_slot,
    ]
    workflows: list[type] = [PipelineRunWorkflow]
    if sessions is not None:
        notifier = None
        if source_dir is not None:
            notifier = DownstreamNotifier(sessions, client, task_queue=task_queue)
        recording = RecordingActivities(sessions, metrics, notifier, attempts=attempts)
        registered.append(recording.record_run_event)
        if source_dir is not None:
            dependencies = DependencyActivities(
                sessions, client, task_queue=task_queue, source_dir=source_dir
            )
            scheduling = ScheduleActivities(
                sessions, client, task_queue=task_queue, source_dir=source_dir
            )
            backfill = BackfillActivities(
                sessions, client, task_queue=task_queue, source_dir=source_dir
            )
            registered += [
                scheduling.plan_schedule,
                scheduling.launch_scheduled,
                backfill.plan_backfill_page,
                backfill.launch_backfill_run,
                backfill.wait_runs,
                backfill.cancel_runs,
                backfill.record_backfill_event,
                dependencies.check_dependencies,
                dependencies.launch_dependent,
                dependencies.fail_dependent,
            ]
            workflows += [PipelineScheduleWorkflow, BackfillWorkflow, DependencyGateWorkflow]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=workflows,
        workflow_runner=workflow_runner(
            WorkflowSettings().workflow_sandbox if sandbox is None else sandbox
        ),
        activities=registered,
        max_concurrent_activities=max_concurrent_activities,
        build_id=build_id(),
        graceful_shutdown_timeout=graceful_shutdown,
        sticky_queue_schedule_to_start_timeout=sticky_timeout,
        # Heartbeats carry cancellations back; the SDK's default throttle (up to 80% of the
        # heartbeat timeout) would delay a run's cancel by tens of seconds.
        max_heartbeat_throttle_interval=HEARTBEAT_EVERY,
        default_heartbeat_throttle_interval=HEARTBEAT_EVERY,
    )


def workflow_runner(sandbox: bool) -> WorkflowRunner:
    """The SDK's sandbox re-imports a workflow's module for every run and proxies every
    `isinstance` and payload conversion inside it: measured, a third of a worker's CPU per
    step (bench/overhead.py prints Laminar with and without it). It guards workflow code against
    non-deterministic calls; Laminar's workflows are Laminar's own code (no pipeline code runs in
    them), and the workflow tests run them sandboxed (tests/integration/scripted.py) and replay
    saved histories, so production workers run them unsandboxed unless asked."""
    return SandboxedWorkflowRunner() if sandbox else UnsandboxedWorkflowRunner()


def secret_resolver(sessions: sessionmaker[Session], key: str) -> SecretResolver:
    """Reads a run's tenant secrets from the database, in a thread (the session blocks)."""
    box = SecretBox(key)

    async def resolve(tenant: str, names: set[str]) -> dict[str, str]:
        def read() -> dict[str, str]:
            with sessions() as session:
                return resolve_secrets(session, box, tenant, names)

        return await asyncio.to_thread(read)

    return resolve


def bundle_resolver(sessions: sessionmaker[Session], cache: Path) -> BundleResolver:
    """Materializes a run's code bundle from the database (once per worker and digest)."""

    async def resolve(tenant: str, digest: str) -> Path:
        def read() -> Path:
            target = cache / digest
            if target.is_dir():
                return target
            with sessions() as session:
                tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
                if tenant_id is None:
                    raise BundleError(f"tenant '{tenant}' not found")
                return bundle_dir(session, tenant_id, digest, cache)

        return await asyncio.to_thread(read)

    return resolve
