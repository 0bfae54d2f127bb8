"""`laminar run` without `--once` for a pipeline with a `schedule`: fire it until Ctrl-C.

The firing is the platform's: the pipeline's `PipelineSchedule` workflow runs on the embedded
worker and starts each interval's run through the launcher (`default/{pipeline}/{logical
date}`, recorded in the state dir's database). Its cursor lives in the state dir's Temporal
database, so a restarted `laminar run` finds the scheduler where it stopped and catches up per
`catchup` (every missed interval, or only the latest). This module only shows the runs the
scheduler starts, one after another, in logical-date order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio.to_thread
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from activities.names import STATE_QUERY
from pipeline_service.cluster_logging import JsonProgressView
from pipeline_service.db.models import Pipeline, Run
from pipeline_service.progress import ProgressView
from pipeline_service.scheduling.sync import preview, scheduler_state, sync_schedule
from schemas.pipeline import PipelineDefinition
from schemas.recording import RUN_FINISHED, RecordedRunStatus
from schemas.run import RunState, RunStatus

POLL = 0.25
"""How often the view looks for the scheduler's next run and asks a run for its state."""


@dataclass(frozen=True)
class ScheduledRun:
    workflow_id: str
    logical_date: datetime
    status: str
    finished_at: datetime | None


def submitted_runs(
    sessions: sessionmaker[Session], tenant_id: int, pipeline: str, after: datetime | None
) -> list[ScheduledRun]:
    """The pipeline's runs that reached Temporal, with a logical date after `after`, in order
    (any trigger: a run the scheduler found already there is shown too)."""
    with sessions() as session:
        query = (
            select(Run.workflow_id, Run.logical_date, Run.status, Run.finished_at)
            .join(Pipeline, Pipeline.id == Run.pipeline_id)
            .where(
                Run.tenant_id == tenant_id,
                Pipeline.name == pipeline,
                Run.submitted_at.is_not(None),
            )
            .order_by(Run.logical_date, Run.id)
        )
        if after is not None:
            query = query.where(Run.logical_date > after)
        return [ScheduledRun(*row) for row in session.execute(query).all()]


class ScheduleFollower:
    """Starts (or finds) the pipeline's scheduler and follows the runs it starts."""

    def __init__(
        self,
        pipeline: PipelineDefinition,
        client: Client,
        sessions: sessionmaker[Session],
        tenant: tuple[int, str],
        *,
        task_queue: str,
        console: Console,
        json_view: bool,
        stop: asyncio.Event,
        on_run: Callable[[str, datetime], None],
        began: datetime,
    ) -> None:
        self.pipeline, self.client, self.sessions = pipeline, client, sessions
        self.tenant_id, self.tenant = tenant
        self.task_queue, self.console, self.json_view = task_queue, console, json_view
        self.stop, self.on_run = stop, on_run
        self.last_status: RunStatus | None = None
        self.began = began
        """When this `laminar run` started (before its worker could finish a resumed run)."""

    async def run(self, stop_signal: Callable[[], int | None]) -> int:
        """Follow runs until stopped: 0 if the last finished run succeeded (or none ran),
        1 if it failed; 128 + signal if a run was still going (it resumes next time)."""
        await sync_schedule(
            self.client, self.tenant, self.pipeline.name, task_queue=self.task_queue
        )
        await self._announce()
        shown_until: datetime | None = await self._resume_point()
        while not self.stop.is_set():
            pending = await anyio.to_thread.run_sync(
                submitted_runs, self.sessions, self.tenant_id, self.pipeline.name, shown_until
            )
            if not pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=POLL)
                continue
            run = pending[0]
            self.on_run(run.workflow_id, run.logical_date)
            ended = await self._follow(run)
            if not ended:
                name = signal.Signals(stop_signal() or signal.SIGINT).name
                self.console.print(
                    f"[yellow]{name}: stopping; run {run.workflow_id} resumes and the schedule "
                    "catches up on the next `laminar run` with this state dir[/]"
                )
                return 128 + (stop_signal() or signal.SIGINT)
            shown_until = run.logical_date
        self.console.print(
            "[yellow]stopping the schedule; the next `laminar run` with this state dir "
            "catches up per its `catchup`[/]"
        )
        return 0 if self.last_status in (None, RunStatus.SUCCEEDED) else 1

    async def _announce(self) -> None:
        schedule = self.pipeline.schedule
        assert schedule is not None
        state = await scheduler_state(self.client, self.tenant, self.pipeline.name)
        upcoming = ", ".join(f.isoformat() for f in preview(schedule, 3))
        zone = f" ({schedule.timezone})" if schedule.timezone != "UTC" else ""
        self.console.print(f"  schedule    {schedule.cron}{zone}, catchup {schedule.catchup}")
        if state is not None and state.cursor is not None:
            self.console.print(f"  handled to  {state.cursor.isoformat()}", highlight=False)
        if state is not None and state.paused:
            self.console.print("[yellow]  the schedule is paused[/]")
        self.console.print(f"  next fires  {upcoming}", highlight=False)
        self.console.print("firing the schedule; Ctrl-C to stop")

    async def _resume_point(self) -> datetime | None:
        """Runs that ended before this `laminar run` started are history: show the ones it
        resumed (also when they ended while it was starting) and new ones."""
        runs = await anyio.to_thread.run_sync(
            submitted_runs, self.sessions, self.tenant_id, self.pipeline.name, None
        )
        finished = {s.value for s in RUN_FINISHED}

        def history(run: ScheduledRun) -> bool:
            ended_at = run.finished_at
            return run.status in finished and ended_at is not None and ended_at < self.began

        ended = [r.logical_date for r in runs if history(r)]
        unfinished = [r.logical_date for r in runs if not history(r)]
        if not ended:
            return None
        last_ended = max(ended)
        if unfinished and min(unfinished) < last_ended:
            return min(unfinished) - timedelta(microseconds=1)  # show from it on
        return last_ended

    async def _follow(self, run: ScheduledRun) -> bool:
        """Show one run until it ends (True) or we are stopped (False)."""
        handle: WorkflowHandle[object, object] = self.client.get_workflow_handle(run.workflow_id)
        self.console.print(
            f"run {run.workflow_id}  (logical date {run.logical_date.isoformat()})",
            highlight=False,
        )
        view: ProgressView | JsonProgressView = (
            JsonProgressView() if self.json_view else ProgressView(self.console, self.pipeline)
        )
        result = asyncio.ensure_future(handle.result())
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            with view:
                while not (result.done() or stopped.done()):
                    with contextlib.suppress(RPCError, TimeoutError):
                        state = await asyncio.wait_for(
                            handle.query(STATE_QUERY, result_type=RunState), timeout=2
                        )
                        view.update(state)
                    await asyncio.wait(
                        {result, stopped}, timeout=POLL, return_when=asyncio.FIRST_COMPLETED
                    )
                if not result.done():
                    return False
                summary = await self._summary(handle, run)
                if summary.status in (RunStatus.PENDING, RunStatus.RUNNING):
                    # The result's long poll ended without the run ending (the worker is
                    # stopping, a connection dropped): it has not finished.
                    return False
                view.finish(summary)
                self.last_status = summary.status
                return True
        finally:
            stopped.cancel()
            if not result.done():
                result.cancel()
            else:
                with contextlib.suppress(Exception):
                    result.exception()  # retrieved: a failed run is reported from its state

    async def _summary(self, handle: WorkflowHandle[object, object], run: ScheduledRun) -> RunState:
        """The run's final state (a failed run's too: the query answers after the end)."""
        try:
            state: RunState = await handle.query(STATE_QUERY, result_type=RunState)
            return state
        except RPCError:
            status = await anyio.to_thread.run_sync(self._recorded_status, run.workflow_id)
            return RunState(
                run_id=run.workflow_id,
                pipeline=self.pipeline.name,
                status=RunStatus.SUCCEEDED
                if status == RecordedRunStatus.SUCCEEDED.value
                else RunStatus.FAILED,
                steps=[],
            )

    def _recorded_status(self, workflow_id: str) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(Run.status).where(Run.workflow_id == workflow_id))
