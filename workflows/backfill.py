"""BackfillWorkflow: one run per interval of a date range, never more than `max_concurrency`
at once, through the launcher (deterministic workflow ids: a date's run is never started twice).

The intervals come a page at a time from an activity (which also applies `reprocess`), so a
10-year hourly backfill neither holds 87,600 items nor outgrows its history: the workflow
continues as new with its cursor, queue and counts. Pause, resume and cancel are signals
(cancel also cancels the runs in flight); `progress` is a query.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.names import (
        CANCEL_RUNS,
        LAUNCH_BACKFILL_RUN,
        PLAN_BACKFILL_PAGE,
        RECORD_BACKFILL_EVENT,
        WAIT_RUNS,
    )
    from schemas.scheduling import (
        BackfillEventInput,
        BackfillInput,
        BackfillItem,
        BackfillLaunchInput,
        BackfillLaunchResult,
        BackfillPage,
        BackfillPageInput,
        BackfillProgress,
        Empty,
        RunsCancelInput,
        RunsWaitInput,
        RunsWaitResult,
    )

PAGE = 200
FINISHED = {"SUCCEEDED": "succeeded", "FAILED": "failed", "CANCELLED": "cancelled"}
_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))
_SHORT = timedelta(seconds=60)


def backfill_workflow_id(tenant: str, backfill_id: str) -> str:
    return f"laminar-backfill/{tenant}/{backfill_id}"


@workflow.defn(name="Backfill")
class BackfillWorkflow:
    @workflow.init
    def __init__(self, start: BackfillInput) -> None:
        # Set here, not in run(): a signal delivered with the start must find the state.
        self._state = start.model_copy(deep=True)
        self._changed = False
        self._launching = 0
        """Launches in progress (their intervals are neither queued nor in flight yet)."""

    @workflow.run
    async def run(self, start: BackfillInput) -> BackfillProgress:
        s = self._state
        if not s.announced:
            await self._event("BACKFILL_STARTED", "RUNNING", "started")
            s.announced = True
        while True:
            if s.cancelling:
                await self._cancel_in_flight()
                break
            if not s.paused:
                await self._fill()
            if s.cancelling:
                continue
            if not s.in_flight and not s.queue and s.exhausted:
                break
            if s.in_flight:
                await self._wait()
            else:
                await self._idle()
            if workflow.info().get_current_history_length() > s.history_limit:
                workflow.continue_as_new(s)
        progress = self.progress()
        reason = ", ".join(f"{k} {v}" for k, v in progress.counts.model_dump().items())
        await self._event("BACKFILL_COMPLETED", progress.state, reason)
        return progress

    async def _fill(self) -> None:
        """Start queued intervals while there is room (one page planned at a time)."""
        s = self._state
        spec = s.spec
        while len(s.in_flight) < spec.max_concurrency and not (s.paused or s.cancelling):
            if not s.queue:
                if s.exhausted:
                    return
                page: BackfillPage = await workflow.execute_activity(
                    PLAN_BACKFILL_PAGE,
                    BackfillPageInput(
                        backfill_id=s.backfill_id,
                        spec=spec,
                        cursor=s.cursor,
                        limit=PAGE,
                        count_total=s.total is None,
                    ),
                    result_type=BackfillPage,
                    start_to_close_timeout=timedelta(minutes=2),
                    retry_policy=_RETRY,
                )
                s.queue, s.cursor, s.exhausted = page.items, page.cursor, page.exhausted
                if page.total is not None:
                    s.total = page.total
                s.counts.planned += len(page.items)
                s.counts.skipped += len(page.skipped)
                continue
            room = spec.max_concurrency - len(s.in_flight)
            batch, s.queue = s.queue[:room], s.queue[room:]
            self._launching = len(batch)
            try:
                results = await asyncio.gather(*(self._launch(item) for item in batch))
            finally:
                self._launching = 0
            for result in results:
                if result.refused is not None:
                    s.counts.skipped += 1
                elif result.status in FINISHED:
                    self._count(result.status)
                else:
                    s.counts.started += 1
                    s.in_flight.append(result.workflow_id)
            s.peak_in_flight = max(s.peak_in_flight, len(s.in_flight))

    async def _launch(self, item: BackfillItem) -> BackfillLaunchResult:
        s = self._state
        result: BackfillLaunchResult = await workflow.execute_activity(
            LAUNCH_BACKFILL_RUN,
            BackfillLaunchInput(backfill_id=s.backfill_id, spec=s.spec, item=item),
            result_type=BackfillLaunchResult,
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
        )
        return result

    async def _wait(self) -> None:
        """Until a run in flight finishes (or a few seconds pass), or a cancel comes."""
        s = self._state
        waiting = workflow.start_activity(
            WAIT_RUNS,
            RunsWaitInput(workflow_ids=s.in_flight, timeout_seconds=3),
            result_type=RunsWaitResult,
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
            cancellation_type=ActivityCancellationType.TRY_CANCEL,
        )
        await workflow.wait_condition(lambda: waiting.done() or s.cancelling)
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(ActivityError, asyncio.CancelledError):
                await waiting
            return
        result: RunsWaitResult = waiting.result()
        for workflow_id, status in result.finished.items():
            if workflow_id in s.in_flight:
                s.in_flight.remove(workflow_id)
                self._count(status)

    async def _idle(self) -> None:
        """Paused with nothing in flight: until resumed or cancelled."""
        self._changed = False
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._changed, timeout=timedelta(hours=1))

    async def _cancel_in_flight(self) -> None:
        s = self._state
        if s.in_flight:
            await workflow.execute_activity(
                CANCEL_RUNS,
                RunsCancelInput(workflow_ids=s.in_flight),
                start_to_close_timeout=_SHORT,
                retry_policy=_RETRY,
            )
            s.counts.cancelled += len(s.in_flight)
            s.in_flight = []
        s.queue = []

    async def _event(self, type: str, status: str, reason: str) -> None:
        s = self._state
        await workflow.execute_activity(
            RECORD_BACKFILL_EVENT,
            BackfillEventInput(
                backfill_id=s.backfill_id,
                event_id=str(workflow.uuid4()),
                tenant=s.spec.tenant,
                pipeline=s.spec.pipeline,
                type=type,
                status=status,
                reason=reason,
            ),
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
        )

    def _count(self, status: str) -> None:
        counts = self._state.counts
        name = FINISHED.get(status)
        if name is not None:
            setattr(counts, name, getattr(counts, name) + 1)

    @workflow.signal(name="pause")
    def pause(self, _: Empty) -> None:
        self._state.paused = True
        self._changed = True

    @workflow.signal(name="resume")
    def resume(self, _: Empty) -> None:
        self._state.paused = False
        self._changed = True

    @workflow.signal(name="cancel")
    def cancel(self, _: Empty) -> None:
        self._state.cancelling = True
        self._changed = True

    @workflow.query(name="progress")
    def progress(self) -> BackfillProgress:
        s = self._state
        busy = bool(s.queue or s.in_flight or self._launching)
        done = s.exhausted and not busy
        if s.cancelling:
            state = "CANCELLING" if s.in_flight or self._launching else "CANCELLED"
        elif done:
            state = "COMPLETED"
        else:
            state = "PAUSED" if s.paused else "RUNNING"
        return BackfillProgress(
            backfill_id=s.backfill_id,
            pipeline=s.spec.pipeline,
            state=state,
            start=s.spec.start,
            end=s.spec.end,
            max_concurrency=s.spec.max_concurrency,
            reprocess=s.spec.reprocess.value,
            order=s.spec.order.value,
            total=s.total,
            counts=s.counts,
            in_flight=len(s.in_flight),
            peak_in_flight=s.peak_in_flight,
            queued=len(s.queue),
        )
