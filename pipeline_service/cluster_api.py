"""The service API inside `laminar run` (--http-port): the same endpoints, health checks and
metrics as the platform, over SQLite in the state dir, for the default tenant. Its runs are
recorded like the platform's (the run starts through the launcher). `--kafka` without
`--http-port` records the run the same way (its events come from the outbox) but serves no
HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import uvicorn
from prometheus_client import start_http_server
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from pipeline_service.api.app import create_app
from pipeline_service.api.services import Services
from pipeline_service.db.migrate import upgrade
from pipeline_service.db.models import Tenant
from pipeline_service.db.pipelines import (
    add_version,
    create_pipeline,
    definition_digest,
    get_pipeline,
    get_version,
)
from pipeline_service.db.session import make_engine, session_factory, transaction
from pipeline_service.db.tenants import (
    Scope,
    create_api_key,
    create_tenant,
    get_tenant,
    resolve_api_key,
)
from pipeline_service.metrics import StepMetrics
from pipeline_service.reconciler import RunReconciler
from pipeline_service.settings import ServiceSettings
from pipeline_service.temporal.client import TASK_QUEUE
from schemas.pipeline import PipelineDefinition
from schemas.run import DEFAULT_TENANT

log = logging.getLogger(__name__)

SERVICE_DB = "laminar.db"
API_KEY_FILE = "api-key"
ACTOR = "laminar-run"


@dataclass
class EmbeddedApi:
    engine: Engine
    sessions: sessionmaker[Session]
    tenant: Tenant
    url: str | None
    """None: the service records the run but serves no HTTP (no --http-port)."""
    key_file: Path
    server: uvicorn.Server | None
    task: asyncio.Task[None] | None
    step_metrics: StepMetrics
    reconciler: RunReconciler
    """The workers' reconciler (pipeline_service/reconciler.py), here too: a run that Temporal
    ended on its own (terminated in the UI, timed out) is recorded as ended."""
    reconciling: asyncio.Task[None] | None = None
    _stop_reconciling: asyncio.Event | None = None

    async def reconcile(self, workflow_id: str) -> None:
        """Record the end of the cluster's run if Temporal ended it behind the workflow's
        back (called when the run's workflow closes; the periodic pass covers the rest)."""
        try:
            await self.reconciler.reconcile_workflow(workflow_id)
        except Exception:
            log.exception("recording the end of %s from Temporal failed", workflow_id)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, timeout=5)
        if self.reconciling is not None and self._stop_reconciling is not None:
            self._stop_reconciling.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reconciling, timeout=10)
        self.engine.dispose()


def _prepare(
    state_dir: Path, pipeline: PipelineDefinition
) -> tuple[Engine, sessionmaker[Session], Tenant]:
    """Migrate the state dir's database; the default tenant, its key file, the pipeline."""
    engine = make_engine(f"sqlite:///{state_dir / SERVICE_DB}")
    upgrade(engine)
    sessions = session_factory(engine)
    key_file = state_dir / API_KEY_FILE
    with transaction(sessions) as session:
        tenant = get_tenant(session, DEFAULT_TENANT) or create_tenant(
            session, DEFAULT_TENANT, actor=ACTOR
        )
        known = key_file.read_text().strip() if key_file.is_file() else ""
        if not known or resolve_api_key(session, known) is None:
            name = f"{ACTOR}-{os.getpid()}"
            _, clear = create_api_key(session, tenant, name, Scope.ADMIN, actor=ACTOR)
            key_file.write_text(clear + "\n")
            key_file.chmod(0o600)
        definition = pipeline.model_dump(mode="json")
        stored = get_pipeline(session, tenant.id, pipeline.name)
        if stored is None:
            create_pipeline(session, tenant.id, pipeline.name, definition, actor=ACTOR)
        else:
            current = get_version(session, stored, stored.current_version)
            if current is None or current.digest != definition_digest(definition):
                add_version(session, stored, definition, actor=ACTOR)
    return engine, sessions, tenant


async def start_embedded_api(
    state_dir: Path,
    pipeline: PipelineDefinition,
    source_dir: Path,
    client: Client,
    http_port: int | None,
    metrics_port: int | None,
) -> EmbeddedApi:
    engine, sessions, tenant = await anyio.to_thread.run_sync(_prepare, state_dir, pipeline)
    settings = ServiceSettings(
        database_url=str(engine.url),
        task_queue=TASK_QUEUE,
        http_port=http_port or 8092,
        source_dir=source_dir,
        work_dir=state_dir / "work",
    )
    app = create_app(settings, temporal=client)
    services: Services = app.state.services
    key_file = state_dir / API_KEY_FILE
    metrics = StepMetrics(services.metrics.registry)
    reconciler = RunReconciler(sessions, client, older_than=settings.reconcile_after)
    if http_port is None:
        api = EmbeddedApi(engine, sessions, tenant, None, key_file, None, None, metrics, reconciler)
        _start_reconciling(api, settings)
        return api
    config = uvicorn.Config(
        app, host="127.0.0.1", port=http_port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    # `laminar run` handles Ctrl-C and SIGTERM itself (it stops the worker, then everything).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if task.done():
        task.result()  # raises why it could not start (e.g. the port is taken)
        raise OSError(f"the API could not listen on 127.0.0.1:{http_port}")
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=services.metrics.registry)
    api = EmbeddedApi(
        engine,
        sessions,
        tenant,
        f"http://127.0.0.1:{http_port}",
        key_file,
        server,
        task,
        metrics,
        reconciler,
    )
    _start_reconciling(api, settings)
    return api


def _start_reconciling(api: EmbeddedApi, settings: ServiceSettings) -> None:
    """The periodic pass, as on every `laminar worker` (LAMINAR_RECONCILE_INTERVAL, 0 = off;
    LAMINAR_RECONCILE_AFTER)."""
    if settings.reconcile_interval.total_seconds() <= 0:
        return
    api._stop_reconciling = asyncio.Event()
    api.reconciling = asyncio.create_task(
        api.reconciler.run(api._stop_reconciling, settings.reconcile_interval)
    )
