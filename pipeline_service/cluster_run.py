"""The running part of `laminar run`: server client, worker, start or resume, progress.

One process starts the Temporal dev server (its SQLite file in the state dir), a worker, and
the pipeline's run, shows progress, and stops everything in order. A run interrupted by a
crash or Ctrl-C resumes on the next start: the workflow's history says which steps finished,
and the attempts that died with the old worker are failed at once so they run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
from rich.console import Console
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.names import STATE_QUERY, WORKER_LOST
from activities.recording import AttemptRecorder
from pipeline_service.cluster import (
    LAMINAR_LOG,
    WAREHOUSE,
    ClusterError,
    ClusterOptions,
    ClusterState,
)
from pipeline_service.cluster_logging import JsonProgressView, cluster_logging
from pipeline_service.cluster_remote import Checkpointer
from pipeline_service.flink_embedded import flink_for, has_flink_steps
from pipeline_service.progress import ProgressView
from pipeline_service.storage.snapshot import copy_warehouse_from
from pipeline_service.temporal.client import TASK_QUEUE
from pipeline_service.temporal.dev_server import DevServer, wait_until_serving
from pipeline_service.temporal.worker import build_worker
from schemas.pipeline import PipelineDefinition
from schemas.run import (
    DEFAULT_TENANT,
    RunContext,
    RunInput,
    RunState,
    RunStatus,
    RunSummary,
    Trigger,
)
from steps.engines.duckdb import DuckDBEngine
from workflows.pipeline_run import PipelineRunWorkflow

if TYPE_CHECKING:
    import threading

    from pipeline_service.cluster_api import EmbeddedApi
    from pipeline_service.cluster_events import ClusterEvents
    from pipeline_service.events.notifier import Notifier

    ClusterNotifier = tuple[Notifier, threading.Event, threading.Thread]

TENANT_KEY = SearchAttributeKey.for_keyword("LaminarTenant")
PIPELINE_KEY = SearchAttributeKey.for_keyword("LaminarPipeline")
LEASE_LOST_EXIT = 3
"""`laminar run`'s exit code when another cluster took the remote state's lease over."""


class PipelineCluster:
    """Runs one pipeline on an embedded stack; `run()` returns the process exit code."""

    def __init__(
        self,
        pipeline: PipelineDefinition,
        source_dir: Path,
        options: ClusterOptions,
        console: Console | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.checkpointer = checkpointer
        self.source_dir = source_dir
        self.options = options
        self.console = console or Console()
        self._stop = asyncio.Event()
        self._ui_url: str | None = None
        self._run_finished = False
        self._exit_code = 0
        self._stop_signal: int | None = None
        self._lease_lost: str | None = None
        self._api: EmbeddedApi | None = None
        self._events: ClusterEvents | None = None
        self._notifier: ClusterNotifier | None = None
        self.started = False
        """The run was started or resumed: the state may have changed since the last snapshot."""
        self._began = datetime.now(UTC)

    @property
    def run_finished(self) -> bool:
        """The run ended (whatever its outcome) and the server has its final state."""
        return self._run_finished

    async def run(self, state: ClusterState, server: DevServer) -> int:
        """Run (or resume) the pipeline on `server`, already launched on the state dir."""
        with cluster_logging(
            self.options.state_dir / LAMINAR_LOG,
            self.options.log_format or "text",
            self.options.log_level,
            self.options.log_file,
        ):
            structlog.contextvars.bind_contextvars(
                tenant=DEFAULT_TENANT, pipeline=self.pipeline.name
            )
            try:
                return await self._run(state, server)
            finally:
                self._release_signals()
                structlog.contextvars.clear_contextvars()

    async def _run(self, state: ClusterState, server: DevServer) -> int:
        state_dir = self.options.state_dir
        self._install_signal_handlers()
        engine = DuckDBEngine(state_dir / WAREHOUSE)  # opens while the server boots
        try:
            client = await wait_until_serving(server, self.options.startup_timeout.total_seconds())
            self.console.print(f"[bold]laminar[/] pipeline [cyan]{self.pipeline.name}[/]")
            self.console.print(f"  state dir   {state_dir}")
            self.console.print(f"  log         {state_dir / LAMINAR_LOG}")
            self.console.print(f"  temporal    {server.address}")
            if server.ui_url:
                self.console.print(f"  temporal ui {server.ui_url}")
                self._ui_url = server.ui_url
            scheduled = self.fires_schedule
            if self.options.http_port is not None or self.options.kafka is not None or scheduled:
                # Imported only here: FastAPI, uvicorn and SQLAlchemy cost start-up time.
                from pipeline_service.cluster_api import start_embedded_api

                self._api = await start_embedded_api(
                    state_dir,
                    self.pipeline,
                    self.source_dir,
                    client,
                    self.options.http_port,
                    self.options.metrics_port,
                )
                if self._api.url is not None:
                    self.console.print(
                        f"  api         {self._api.url}/docs  (key in {self._api.key_file})"
                    )
                if self.options.metrics_port is not None:
                    metrics = f"http://127.0.0.1:{self.options.metrics_port}/metrics"
                    self.console.print(f"  metrics     {metrics}")
                if self.options.kafka is not None:
                    self._events = await self._start_events(self.options.kafka)
                if self.pipeline.notifications:
                    self._notifier = await self._start_notifier()
            elif self.pipeline.notifications:
                self.console.print(
                    "[yellow]  notify      the pipeline's notifications are sent from the "
                    "recorded events: run with --http-port or --kafka to send them[/]"
                )
            async with flink_for(self.pipeline, state_dir) as flink:
                if has_flink_steps(self.pipeline):
                    self.console.print(f"  flink       {flink.rest_url}")
                attempts = (
                    AttemptRecorder(self._api.sessions, self._api.step_metrics)
                    if self._api
                    else None
                )
                worker = build_worker(
                    client,
                    task_queue=TASK_QUEUE,
                    engine=engine,
                    work_root=state_dir / "work",
                    graceful_shutdown=self.options.shutdown_grace,
                    sticky_timeout=timedelta(seconds=1),
                    sessions=self._api.sessions if self._api else None,
                    metrics=self._api.step_metrics if self._api else None,
                    attempts=attempts,
                    flink=flink,
                    # The scheduler's activities start runs through the launcher.
                    source_dir=self.source_dir if scheduled else None,
                    s3_endpoint=self.options.s3_endpoint,
                )
                if self.checkpointer is not None:
                    connection = engine.cursor()
                    self.checkpointer.start(lambda target: copy_warehouse_from(connection, target))
                    loop = asyncio.get_running_loop()
                    remote = self.checkpointer.remote

                    def lease_lost(why: str) -> None:  # called on the lease's thread
                        loop.call_soon_threadsafe(self._on_lease_lost, why)

                    remote.on_lease_lost = lease_lost
                    if remote.lease_lost is not None:  # lost while the stack was starting
                        self._on_lease_lost(remote.lease_lost)
                try:
                    # The worker runs before the run starts, so the start can be eager: the
                    # server hands the first workflow task back in its reply, not a poll's.
                    async with worker:
                        if scheduled:
                            self.started = True
                            return await self._fire_schedule(client, state)
                        return await self._start_and_follow(client, state, server)
                finally:
                    # Steps that ended in the shutdown grace queued their attempts' ends: into
                    # the state dir's database before it closes (the run resumes from there).
                    if attempts is not None:
                        await attempts.flush()
        finally:
            if self._notifier is not None:
                await self._stop_notifier(self._notifier)
            if self._events is not None:
                await self._stop_events(self._events)
            if self._api is not None:
                await self._api.stop()
            if self.checkpointer is not None:
                await self.checkpointer.stop()  # before the warehouse closes under an upload
            engine.close()

    async def _start_and_follow(
        self, client: Client, state: ClusterState, server: DevServer
    ) -> int:
        handle = await self._start_or_resume(client, state)
        self.started = True
        structlog.contextvars.bind_contextvars(run_id=handle.id)
        ui_link = ""
        run = handle.run_id or handle.result_run_id or handle.first_execution_run_id
        if server.ui_url and run:
            workflow_path = f"{quote(handle.id, safe='')}/{run}/history"
            ui_link = f"{server.ui_url}/namespaces/default/workflows/{workflow_path}"
        self.console.print(f"  run         {handle.id}  {ui_link}")
        return await self._follow(handle)

    @property
    def fires_schedule(self) -> bool:
        """Without --once (and without a dated run), a pipeline with a schedule is fired by
        its scheduler workflow until Ctrl-C instead of running once."""
        return (
            not self.options.once
            and self.options.interval is None
            and self.pipeline.schedule is not None
        )

    async def _fire_schedule(self, client: Client, state: ClusterState) -> int:
        from pipeline_service.cluster_schedule import ScheduleFollower, submitted_runs
        from schemas.recording import RUN_FINISHED

        assert self._api is not None
        api = self._api
        # Runs the previous `laminar run` left going: their interrupted attempts run again now.
        runs = await asyncio.to_thread(
            submitted_runs, api.sessions, api.tenant.id, self.pipeline.name, None
        )
        for run in runs:
            if run.status in {s.value for s in RUN_FINISHED}:
                continue
            with contextlib.suppress(RPCError):
                description = await client.get_workflow_handle(run.workflow_id).describe()
                if description.status == WorkflowExecutionStatus.RUNNING:
                    handle = client.get_workflow_handle(run.workflow_id, run_id=description.run_id)
                    await self._recover_orphans(client, handle, description)

        def on_run(workflow_id: str, logical_date: datetime) -> None:
            state.current_run, state.logical_date = workflow_id, logical_date.isoformat()
            state.write(self.options.state_dir)

        follower = ScheduleFollower(
            self.pipeline,
            client,
            api.sessions,
            (api.tenant.id, api.tenant.name),
            task_queue=TASK_QUEUE,
            console=self.console,
            json_view=self.options.log_format == "json",
            stop=self._stop,
            on_run=on_run,
            began=self._began,
        )
        code = await follower.run(lambda: self._stop_signal)
        self._exit_code = code
        return code

    async def _start_events(self, kafka: str) -> ClusterEvents:
        from pipeline_service.cluster_events import EMBEDDED, start_cluster_events

        assert self._api is not None
        try:
            # On this (the main) thread: the embedded broker dies with the thread that started
            # it, also when laminar is killed (see events/broker.py).
            events = start_cluster_events(kafka, self._api.engine, self.options.state_dir)
        except Exception as exc:  # the broker could not start, bad Kafka settings
            raise ClusterError(f"--kafka {kafka}: {exc}") from None
        note = "  (embedded Tansu: in memory only)" if kafka == EMBEDDED else ""
        self.console.print(f"  kafka       {events.bootstrap_servers}{note}")
        self.console.print(f"  events      topic {events.relay.topic}")
        return events

    async def _start_notifier(self) -> ClusterNotifier:
        """The pipeline's `notifications`, sent from the recorded events (events/notifier.py)."""
        from pipeline_service.events.notifier import start_notifier
        from schemas.connections import ResourceError

        assert self._api is not None
        try:
            notifier = await asyncio.to_thread(
                start_notifier, self._api.sessions, secret_key=None, poll=0.5
            )
        except ResourceError as exc:
            raise ClusterError(str(exc)) from None
        self.console.print(f"  notify      {len(self.pipeline.notifications)} rule(s)")
        return notifier

    async def _stop_notifier(self, notifier: ClusterNotifier) -> None:
        """Stop the thread, then one last round: the run's end is notified before exit."""
        instance, stop, thread = notifier
        stop.set()
        await asyncio.to_thread(thread.join, 10)
        try:
            result = await asyncio.to_thread(instance.round)
        except Exception as exc:
            self.console.print(f"[yellow]notifications: last round failed: {exc}[/]")
            return
        if result.retrying:
            self.console.print(
                f"[yellow]{result.retrying} notification(s) not delivered yet: they are sent by "
                "the next `laminar run` of the state dir[/]"
            )

    async def _stop_events(self, events: ClusterEvents) -> None:
        waiting = await events.stop()
        if waiting:
            self.console.print(
                f"[yellow]{waiting} event(s) not delivered to Kafka yet: they wait in the state "
                "dir's outbox for the next `laminar run --kafka`[/]"
            )

    async def _start_or_resume(
        self, client: Client, state: ClusterState
    ) -> WorkflowHandle[Any, Any]:
        if self.options.interval is not None:
            return await self._start_or_report_dated(client, state)
        if state.current_run:
            handle = client.get_workflow_handle(state.current_run)
            try:
                description = await handle.describe()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                description = None
            if description is not None and description.status == WorkflowExecutionStatus.RUNNING:
                self.console.print(f"[yellow]resuming[/] run {handle.id}")
                if state.fingerprint and state.fingerprint != self._fingerprint():
                    self.console.print(
                        "[yellow]the definition or params changed since this run started: it "
                        "finishes as it started; the changes apply to the next run[/]"
                    )
                handle = client.get_workflow_handle(handle.id, run_id=description.run_id)
                await self._recover_orphans(client, handle, description)
                return handle
            if description is None and state.logical_date:
                # Crashed between recording the run and starting it: start it now.
                return await self._start(client, state, datetime.fromisoformat(state.logical_date))
        logical_date = datetime.now(UTC).replace(microsecond=0)
        return await self._start(client, state, logical_date)

    async def _start_or_report_dated(
        self, client: Client, state: ClusterState
    ) -> WorkflowHandle[Any, Any]:
        """A dated run has one id per logical date: a second start resumes it while it runs and
        reports its outcome once it has ended, never runs it twice."""
        interval = self.options.interval
        assert interval is not None
        run_id = f"{DEFAULT_TENANT}/{self.pipeline.name}/{interval.logical_date.isoformat()}"
        handle = client.get_workflow_handle(run_id)
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            description = None
        state.current_run, state.logical_date = run_id, interval.logical_date.isoformat()
        if description is None:
            context = RunContext(
                pipeline=self.pipeline.name,
                run_id=run_id,
                trigger=Trigger.SCHEDULE,
                logical_date=interval.logical_date,
                data_interval_start=interval.start,
                data_interval_end=interval.end,
                params=self.options.params,
            )
            return await self._start(client, state, interval.logical_date, context)
        handle = client.get_workflow_handle(run_id, run_id=description.run_id)
        if description.status == WorkflowExecutionStatus.RUNNING:
            self.console.print(f"[yellow]resuming[/] run {run_id}")
            state.write(self.options.state_dir)
            await self._recover_orphans(client, handle, description)
            return handle
        status = description.status.name if description.status else "ENDED"
        self.console.print(
            f"[yellow]the run for logical date {interval.logical_date.isoformat()} already "
            f"ended ({status}); reporting it, not running it again[/]"
        )
        return handle

    def _fingerprint(self) -> str:
        document = json.dumps(
            [self.pipeline.model_dump(mode="json"), self.options.params], sort_keys=True
        )
        return hashlib.sha256(document.encode()).hexdigest()[:16]

    async def _start(
        self,
        client: Client,
        state: ClusterState,
        logical_date: datetime,
        context: RunContext | None = None,
    ) -> WorkflowHandle[Any, Any]:
        run_id = f"{DEFAULT_TENANT}/{self.pipeline.name}/manual__{logical_date.isoformat()}"
        if context is None:
            context = RunContext.manual(
                self.pipeline.name, run_id, logical_date, self.options.params
            )
        run_id = context.run_id
        # Record the run before starting it, so a crash in between still resumes it.
        state.current_run, state.logical_date = run_id, logical_date.isoformat()
        state.fingerprint = self._fingerprint()
        state.write(self.options.state_dir)
        if self._api is not None:
            # With the service embedded, the run starts as every service run does: through
            # the launcher, which records it (and the workflow records its progress).
            from pipeline_service.cluster_api import ACTOR
            from pipeline_service.launcher import LaunchRequest, launch_run

            await launch_run(
                self._api.sessions,
                client,
                LaunchRequest(
                    tenant=self._api.tenant,
                    pipeline=self.pipeline.name,
                    actor=ACTOR,
                    params=self.options.params,
                    logical_date=logical_date,
                    workflow_id=run_id,
                    trigger=context.trigger,
                    max_parallelism=self.options.parallelism,
                ),
                task_queue=TASK_QUEUE,
                source_dir=self.source_dir,
                eager=True,
            )
            return client.get_workflow_handle(run_id)
        return await client.start_workflow(
            PipelineRunWorkflow.run,
            RunInput(
                pipeline=self.pipeline,
                context=context,
                source_dir=str(self.source_dir),
                max_parallelism=self.options.parallelism,
            ),
            id=run_id,
            task_queue=TASK_QUEUE,
            execution_timeout=self.pipeline.timeout,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            request_eager_start=True,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(TENANT_KEY, DEFAULT_TENANT),
                    SearchAttributePair(PIPELINE_KEY, self.pipeline.name),
                ]
            ),
            memo={"tenant": DEFAULT_TENANT, "pipeline": self.pipeline.name},
        )

    async def _recover_orphans(
        self,
        client: Client,
        handle: WorkflowHandle[Any, Any],
        description: WorkflowExecutionDescription,
    ) -> None:
        """Fail the attempts that died with the previous worker, so they run again now.

        Without this Temporal only notices at the attempt's heartbeat or start-to-close timeout.
        The failure type WORKER_LOST makes the workflow reschedule the step without spending a
        retry. Clearing the sticky queue saves waiting out the dead worker's sticky timeout.
        """
        for pending in description.raw_description.pending_activities:
            if pending.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                continue
            activity = client.get_async_activity_handle(
                workflow_id=handle.id,
                run_id=description.run_id,
                activity_id=pending.activity_id,
            )
            error = ApplicationError(
                "the worker running this attempt stopped",
                pending.attempt,
                type=WORKER_LOST,
                non_retryable=True,
            )
            with contextlib.suppress(RPCError):  # it may have just finished or timed out
                await activity.fail(error)
                self.console.print(
                    f"[yellow]step {pending.activity_id.split('#')[0]} was interrupted; "
                    f"running it again[/]"
                )
        with contextlib.suppress(RPCError):
            await client.workflow_service.reset_sticky_task_queue(
                ResetStickyTaskQueueRequest(
                    namespace=client.namespace,
                    execution=WorkflowExecution(workflow_id=handle.id, run_id=description.run_id),
                )
            )

    async def _follow(self, handle: WorkflowHandle[Any, Any]) -> int:
        """Show progress until the run ends or we are asked to stop; return the exit code."""
        result_task = asyncio.ensure_future(handle.result())
        stop_task = asyncio.ensure_future(self._stop.wait())
        view: ProgressView | JsonProgressView = (
            JsonProgressView()
            if self.options.log_format == "json"
            else ProgressView(self.console, self.pipeline)
        )
        with view:
            while not (result_task.done() or stop_task.done()):
                with contextlib.suppress(RPCError, asyncio.TimeoutError):
                    state = await asyncio.wait_for(
                        handle.query(STATE_QUERY, result_type=RunState), timeout=2
                    )
                    view.update(state)
                    if self.checkpointer is not None:
                        self.checkpointer.observe(state)
                await asyncio.wait(
                    {result_task, stop_task}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED
                )
            if stop_task.done() and not result_task.done() and await self._has_ended(handle):
                # The run ended as the signal arrived: its outcome, not the signal, is the
                # answer (the result's long poll may lag the end by a moment).
                await asyncio.wait({result_task}, timeout=10)
            if stop_task.done() and not result_task.done() and self._lease_lost is not None:
                result_task.cancel()
                where = self.checkpointer.remote.where if self.checkpointer else "the state"
                self.console.print(
                    f"[red]lease on {where} lost ({self._lease_lost}): another laminar run "
                    f"owns this state and continues run {handle.id} from its latest "
                    "checkpoint; stopping without further checkpoints[/]"
                )
                return LEASE_LOST_EXIT
            if stop_task.done() and not result_task.done():
                result_task.cancel()
                name = signal.Signals(self._stop_signal or signal.SIGINT).name
                self.console.print(
                    f"[yellow]{name}: stopping; run {handle.id} will resume on the next "
                    f"`laminar run` with this state dir[/]"
                )
                return 128 + (self._stop_signal or signal.SIGINT)
            if self._api is not None:
                # Terminated in the Temporal UI or timed out: the workflow could not record
                # its own end, so the reconciler does, before we report.
                await self._api.reconcile(handle.id)
            summary = await self._final_summary(handle, result_task)
            if self.checkpointer is not None:
                self.checkpointer.observe(summary)
            view.finish(summary)
        code = 0 if summary.status == RunStatus.SUCCEEDED else 1
        self._run_finished, self._exit_code = True, code
        if not self.options.once:
            # The cluster stays up (the UI stays browsable) until asked to stop; --once exits.
            where = f" (Temporal UI: {self._ui_url})" if self._ui_url else ""
            self.console.print(f"serving{where}; Ctrl-C to stop, or use --once to exit after a run")
            await stop_task
        stop_task.cancel()
        return code

    async def _has_ended(self, handle: WorkflowHandle[Any, Any]) -> bool:
        with contextlib.suppress(RPCError, asyncio.TimeoutError):
            description = await asyncio.wait_for(handle.describe(), timeout=2)
            return description.status not in (None, WorkflowExecutionStatus.RUNNING)
        return False

    async def _final_summary(
        self, handle: WorkflowHandle[Any, Any], result: asyncio.Future[Any]
    ) -> RunSummary:
        try:
            value = result.result()
            return value if isinstance(value, RunSummary) else RunSummary.model_validate(value)
        except WorkflowFailureError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.details:
                return RunSummary.model_validate(cause.details[0])
            description = await handle.describe()
            status = {
                WorkflowExecutionStatus.TIMED_OUT: RunStatus.TIMED_OUT,
                WorkflowExecutionStatus.CANCELED: RunStatus.CANCELLED,
                WorkflowExecutionStatus.TERMINATED: RunStatus.CANCELLED,
            }.get(description.status or WorkflowExecutionStatus.FAILED, RunStatus.FAILED)
            return RunSummary(
                run_id=handle.id,
                pipeline=self.pipeline.name,
                status=status,
                steps=[],
                error=str(cause or exc),
            )

    def _on_lease_lost(self, why: str) -> None:
        """Another cluster may own the state now: stop as on SIGTERM (running steps get the
        shutdown grace), with exit code 3 and no checkpoint at shutdown."""
        if self._lease_lost is None and not self._stop.is_set():
            self._lease_lost = why
            self._stop.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):

            def handler(signum: int = signum) -> None:
                if self._stop.is_set():
                    # Second signal: stop now. Everything is durable; the children die with us
                    # (parent-death signal) and the next `laminar run` resumes the run.
                    self.console.print("[red]stopping at once[/]")
                    os._exit(self._exit_code if self._run_finished else 128 + signum)
                self._stop_signal = signum
                self._stop.set()
                if not self._run_finished:
                    self.console.print(
                        "[yellow]stopping: running steps get a moment to finish "
                        "(signal again to stop at once)[/]"
                    )

            loop.add_signal_handler(signum, handler)

    def _release_signals(self) -> None:
        """What is left (closing the warehouse, stopping the server) is short and bounded, and
        the exit code is decided: signals from here on are ignored. Without this, closing the
        loop hands SIGINT back to Python, and a late Ctrl-C would end in KeyboardInterrupt."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
