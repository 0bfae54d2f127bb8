"""PipelineScheduleWorkflow: one per scheduled pipeline, firing its runs on durable timers.

The fire times come from an activity (croniter in the pipeline's zone, placed on UTC by the
DST rule of `pipeline_service.scheduling.fire_times`); this workflow only sleeps until the next
one, asks the launcher to start each due interval's run (`{tenant}/{pipeline}/{logical date}`,
so a repeated start is a no-op), and keeps a cursor: the end of the last interval it handled.
A changed schedule never fires an interval that ends at or before the cursor.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.names import LAUNCH_SCHEDULED, PLAN_SCHEDULE
    from schemas.scheduling import (
        LaunchOutcome,
        LaunchScheduledInput,
        LaunchScheduledResult,
        PauseSignal,
        PlanScheduleInput,
        RefreshSignal,
        ScheduledFire,
        SchedulePlan,
        SchedulerInput,
        SchedulerResult,
        SchedulerState,
    )

CATCHUP_PATCH = "catchup-buffers"
"""Patch id: under overlap `skip`, a catch-up's missed fires are buffered, not skipped (before
it, a catch-up ran only the first missed interval while the others were skipped)."""
SHORT_WAIT = timedelta(milliseconds=1500)
"""A fire closer than this is waited for in the plan activity, not on a timer: the server
rounds timers under 1 s up to 1 s (measured on the dev server: 0.3 s fired after 0.98 s)."""
BUFFER_POLL = timedelta(seconds=2)
"""How often a buffered fire checks whether the previous run has ended."""
MAX_LOOPS = 500
"""Loops before continue-as-new (keeps the history small; the state is carried over)."""
_ACTIVITY_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))


def scheduler_workflow_id(tenant: str, pipeline: str) -> str:
    return f"laminar-schedule/{tenant}/{pipeline}"


@workflow.defn(name="PipelineSchedule")
class PipelineScheduleWorkflow:
    @workflow.init
    def __init__(self, start: SchedulerInput) -> None:
        # Set here, not in run(): a signal delivered with the start must find the state.
        self._state = start.model_copy(deep=True)
        self._woken = False
        self._refreshed = False
        self._wait_until: datetime | None = None
        self._next: ScheduledFire | None = None
        self._outcomes: list[str] = []
        self._definition_paused = False

    @workflow.run
    async def run(self, start: SchedulerInput) -> SchedulerResult:
        for _ in range(MAX_LOOPS):
            self._woken = False
            plan = await self._plan()
            if not plan.active:
                return SchedulerResult(reason=plan.reason)
            if self._state.cursor is None:
                self._state.cursor = plan.cursor
            if self._refreshed and plan.paused != self._definition_paused:
                self._state.paused = None  # the definition's `paused` changed: it wins
            self._refreshed = False
            self._definition_paused = plan.paused
            self._next = plan.next
            if not self._paused:
                backlog = len(plan.due) > 1 or bool(self._state.buffered)
                overlap = self._overlap(plan.overlap, backlog=backlog)
                for fire in plan.due:
                    await self._fire(fire, overlap)
                await self._drain(overlap)
            await self._sleep(plan)
        workflow.continue_as_new(self._state)

    def _overlap(self, overlap: str, *, backlog: bool) -> str:
        """`skip` drops a fire that comes while the previous run still runs; missed intervals
        handed over at once (a catch-up) are a backlog, not such fires: they are buffered and
        run one after another (as `buffer_all`), and fires that come while the backlog drains
        join it in order (nothing is lost or run out of order); then `skip` applies again."""
        if overlap == "skip" and backlog and workflow.patched(CATCHUP_PATCH):
            return "buffer_all"
        return overlap

    @property
    def _paused(self) -> bool:
        override = self._state.paused
        return self._definition_paused if override is None else override

    async def _plan(self) -> SchedulePlan:
        plan: SchedulePlan = await workflow.execute_activity(
            PLAN_SCHEDULE,
            PlanScheduleInput(
                tenant=self._state.tenant,
                pipeline=self._state.pipeline,
                cursor=self._state.cursor,
                now=workflow.now(),
                wait_until=self._wait_until,
            ),
            result_type=SchedulePlan,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_ACTIVITY_RETRY,
        )
        return plan

    async def _launch(self, fire: ScheduledFire, overlap: str) -> LaunchScheduledResult:
        result: LaunchScheduledResult = await workflow.execute_activity(
            LAUNCH_SCHEDULED,
            LaunchScheduledInput(
                tenant=self._state.tenant,
                pipeline=self._state.pipeline,
                fire=fire,
                overlap=overlap,
            ),
            result_type=LaunchScheduledResult,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_ACTIVITY_RETRY,
        )
        self._outcomes = [
            *self._outcomes[-19:],
            f"{fire.logical_date.isoformat()} {result.outcome}",
        ]
        return result

    async def _fire(self, fire: ScheduledFire, overlap: str) -> None:
        """Start the interval's run (or buffer it behind the running one)."""
        buffering = overlap in ("buffer_one", "buffer_all")
        if not (buffering and self._state.buffered):
            result = await self._launch(fire, overlap)
            if result.outcome != LaunchOutcome.BUSY:
                self._state.cursor = fire.interval_end
                self._state.fired += 1
                return
        if overlap == "buffer_one":
            self._state.buffered = [fire]  # a newer fire replaces the waiting one
        else:
            self._state.buffered.append(fire)
        self._state.cursor = fire.interval_end

    async def _drain(self, overlap: str) -> None:
        while self._state.buffered:
            head = self._state.buffered[0]
            result = await self._launch(head, overlap)
            if result.outcome == LaunchOutcome.BUSY:
                return
            self._state.buffered.pop(0)
            self._state.fired += 1

    async def _sleep(self, plan: SchedulePlan) -> None:
        wake: datetime | None = None
        if not self._paused:
            if plan.next is not None:
                wake = plan.next.wake_at
            if self._state.buffered:
                poll = workflow.now() + BUFFER_POLL
                wake = poll if wake is None else min(wake, poll)
        self._wait_until = None
        if wake is not None and wake - workflow.now() < SHORT_WAIT and not self._woken:
            self._wait_until = wake
            return
        timeout = None if wake is None else wake - workflow.now()
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._woken, timeout=timeout)

    @workflow.signal(name="pause")
    def pause(self, signal: PauseSignal) -> None:
        self._state.paused = signal.paused
        self._woken = True

    @workflow.signal(name="refresh")
    def refresh(self, _: RefreshSignal) -> None:
        self._refreshed = True
        self._woken = True

    @workflow.query(name="state")
    def state(self) -> SchedulerState:
        return SchedulerState(
            tenant=self._state.tenant,
            pipeline=self._state.pipeline,
            paused=self._paused,
            cursor=self._state.cursor,
            buffered=self._state.buffered,
            fired=self._state.fired,
            next=self._next,
            last_outcomes=self._outcomes,
        )
