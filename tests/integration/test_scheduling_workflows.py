"""BackfillWorkflow, PipelineScheduleWorkflow and DependencyGateWorkflow on the dev server with
stand-in activities (registered under the real names; the real ones are exercised in
tests/service): a gate checks again on each upstream signal; a backfill continues as new
without losing or repeating an interval and never exceeds max_concurrency; saved histories of
all three replay (LAMINAR_RECORD_HISTORIES=1 records missing ones)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import Replayer, Worker

from activities.names import (
    CANCEL_RUNS,
    CHECK_DEPENDENCIES,
    FAIL_DEPENDENT,
    LAUNCH_BACKFILL_RUN,
    LAUNCH_DEPENDENT,
    LAUNCH_SCHEDULED,
    PLAN_BACKFILL_PAGE,
    PLAN_SCHEDULE,
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
    BackfillSpec,
    GateCheck,
    GateCheckInput,
    GateFailInput,
    GateInput,
    GateOutcome,
    LaunchOutcome,
    LaunchScheduledInput,
    LaunchScheduledResult,
    PlanScheduleInput,
    RunsCancelInput,
    RunsWaitInput,
    RunsWaitResult,
    ScheduledFire,
    SchedulePlan,
    SchedulerInput,
    UpstreamSignal,
)
from workflows.backfill import BackfillWorkflow
from workflows.dependency_gate import DependencyGateWorkflow
from workflows.schedule import PipelineScheduleWorkflow

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
START = datetime(2027, 1, 1, tzinfo=UTC)


class FakeRuns:
    """Runs that finish shortly after they start; counts what is running at once."""

    def __init__(self, intervals: int, page: int) -> None:
        self.intervals, self.page = intervals, page
        self.launched: list[str] = []
        self.running: set[str] = set()
        self.peak = 0
        self.events: list[str] = []

    @activity.defn(name=PLAN_BACKFILL_PAGE)
    async def plan(self, request: BackfillPageInput) -> BackfillPage:
        done = 0 if request.cursor is None else (request.cursor - START) // timedelta(hours=1) + 1
        hours = range(done, min(done + self.page, self.intervals))
        items = [
            BackfillItem(
                logical_date=START + timedelta(hours=h),
                interval_end=START + timedelta(hours=h + 1),
                workflow_id=f"t/p/{h}",
            )
            for h in hours
        ]
        return BackfillPage(
            items=items,
            skipped=[],
            cursor=items[-1].logical_date if items else request.cursor,
            exhausted=hours.stop >= self.intervals,
            total=self.intervals if request.count_total else None,
        )

    @activity.defn(name=LAUNCH_BACKFILL_RUN)
    async def launch(self, request: BackfillLaunchInput) -> BackfillLaunchResult:
        workflow_id = request.item.workflow_id
        if workflow_id not in self.launched:
            self.launched.append(workflow_id)
            self.running.add(workflow_id)
        self.peak = max(self.peak, len(self.running))
        return BackfillLaunchResult(workflow_id=workflow_id, status="QUEUED")

    @activity.defn(name=WAIT_RUNS)
    async def wait(self, request: RunsWaitInput) -> RunsWaitResult:
        await asyncio.sleep(0.01)
        first = request.workflow_ids[0]
        self.running.discard(first)
        return RunsWaitResult(finished={first: "SUCCEEDED"})

    @activity.defn(name=CANCEL_RUNS)
    async def cancel(self, request: RunsCancelInput) -> None:
        self.running -= set(request.workflow_ids)

    @activity.defn(name=RECORD_BACKFILL_EVENT)
    async def event(self, request: BackfillEventInput) -> None:
        self.events.append(request.type)


async def run_backfill(client: Client, runs: FakeRuns, history_limit: int) -> tuple[str, str]:
    queue = f"backfill-{uuid.uuid4()}"
    spec = BackfillSpec(
        tenant="t", pipeline="p", start=START, end=START + timedelta(days=10), max_concurrency=3
    )
    async with Worker(
        client,
        task_queue=queue,
        workflows=[BackfillWorkflow],
        activities=[runs.plan, runs.launch, runs.wait, runs.cancel, runs.event],
    ):
        handle = await client.start_workflow(
            BackfillWorkflow.run,
            BackfillInput(backfill_id="bf-test", spec=spec, history_limit=history_limit),
            id=f"backfill-test-{uuid.uuid4()}",
            task_queue=queue,
        )
        progress = await handle.result()
    assert progress.state == "COMPLETED"
    assert progress.counts.succeeded == progress.counts.started == runs.intervals
    assert progress.peak_in_flight <= 3
    return handle.id, handle.first_execution_run_id or ""


async def test_a_backfill_continues_as_new_without_losing_or_repeating_intervals(
    client: Client,
) -> None:
    runs = FakeRuns(intervals=120, page=25)
    workflow_id, first_run = await run_backfill(client, runs, history_limit=150)
    assert runs.launched == [f"t/p/{h}" for h in range(120)]  # each once, in order
    assert 1 <= runs.peak <= 3
    assert runs.events == ["BACKFILL_STARTED", "BACKFILL_COMPLETED"]
    first = await client.get_workflow_handle(workflow_id, run_id=first_run).describe()
    assert first.status == WorkflowExecutionStatus.CONTINUED_AS_NEW


class FakeSchedule:
    """Three fires 0.2 s apart, then the schedule is gone."""

    def __init__(self) -> None:
        self.plans = 0
        self.launched: list[datetime] = []

    @activity.defn(name=PLAN_SCHEDULE)
    async def plan(self, request: PlanScheduleInput) -> SchedulePlan:
        self.plans += 1
        if len(self.launched) >= 3:
            return SchedulePlan(active=False, reason="no schedule")
        now = request.now
        due = ScheduledFire(logical_date=now - timedelta(seconds=1), interval_end=now, wake_at=now)
        upcoming = now + timedelta(milliseconds=200)
        fire = ScheduledFire(logical_date=now, interval_end=upcoming, wake_at=upcoming)
        return SchedulePlan(active=True, cursor=now, due=[due], next=fire, overlap="skip")

    @activity.defn(name=LAUNCH_SCHEDULED)
    async def launch(self, request: LaunchScheduledInput) -> LaunchScheduledResult:
        self.launched.append(request.fire.logical_date)
        return LaunchScheduledResult(outcome=LaunchOutcome.STARTED, workflow_id="t/p/x")


async def run_scheduler(client: Client) -> str:
    fake = FakeSchedule()
    queue = f"schedule-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[PipelineScheduleWorkflow],
        activities=[fake.plan, fake.launch],
    ):
        handle = await client.start_workflow(
            PipelineScheduleWorkflow.run,
            SchedulerInput(tenant="t", pipeline="p"),
            id=f"schedule-test-{uuid.uuid4()}",
            task_queue=queue,
        )
        result = await handle.result()
    assert result.reason == "no schedule" and len(fake.launched) == 3
    return handle.id


class FakeCatchUp:
    """A scheduler back from downtime with overlap `skip`: three missed intervals due at once,
    each stand-in run busy for 0.3 s after its start (so the next launch sees it running)."""

    def __init__(self) -> None:
        self.launched: list[datetime] = []
        self.outcomes: list[str] = []
        self.busy_until = datetime.min.replace(tzinfo=UTC)

    @activity.defn(name=PLAN_SCHEDULE)
    async def plan(self, request: PlanScheduleInput) -> SchedulePlan:
        if self.outcomes.count("started") >= 3:
            return SchedulePlan(active=False, reason="caught up")
        if request.cursor is not None:  # after the catch-up plan: nothing due, plan again soon
            soon = request.now + timedelta(milliseconds=300)
            upcoming = ScheduledFire(logical_date=soon, interval_end=soon, wake_at=soon)
            return SchedulePlan(
                active=True, cursor=request.cursor, due=[], next=upcoming, overlap="skip"
            )
        due = [
            ScheduledFire(
                logical_date=START + timedelta(hours=h),
                interval_end=START + timedelta(hours=h + 1),
                wake_at=START + timedelta(hours=h + 1),
            )
            for h in range(3)
        ]
        return SchedulePlan(active=True, cursor=START, due=due, overlap="skip")

    @activity.defn(name=LAUNCH_SCHEDULED)
    async def launch(self, request: LaunchScheduledInput) -> LaunchScheduledResult:
        now = datetime.now(UTC)
        if now < self.busy_until:
            outcome = LaunchOutcome.SKIPPED if request.overlap == "skip" else LaunchOutcome.BUSY
        else:
            outcome = LaunchOutcome.STARTED
            self.busy_until = now + timedelta(milliseconds=300)
            self.launched.append(request.fire.logical_date)
        self.outcomes.append(outcome.value)
        return LaunchScheduledResult(outcome=outcome, workflow_id="t/p/x")


async def run_catch_up(client: Client) -> tuple[str, FakeCatchUp]:
    fake = FakeCatchUp()
    queue = f"catch-up-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[PipelineScheduleWorkflow],
        activities=[fake.plan, fake.launch],
    ):
        handle = await client.start_workflow(
            PipelineScheduleWorkflow.run,
            SchedulerInput(tenant="t", pipeline="p"),
            id=f"catch-up-test-{uuid.uuid4()}",
            task_queue=queue,
        )
        with contextlib.suppress(asyncio.TimeoutError):  # before the patch: never caught up
            await asyncio.wait_for(handle.result(), timeout=6)
        with contextlib.suppress(RPCError):
            await handle.terminate("test over")
    return handle.id, fake


async def test_a_catch_up_under_overlap_skip_runs_every_missed_interval(client: Client) -> None:
    _, fake = await run_catch_up(client)
    # The second and third missed intervals waited for the run before them (busy), then ran.
    assert fake.launched == [START + timedelta(hours=h) for h in range(3)]
    assert "skipped" not in fake.outcomes and "busy" in fake.outcomes, fake.outcomes


class FakeGate:
    """Upstream runs arrive one by one (signals), then the run starts."""

    def __init__(self) -> None:
        self.checks = 0
        self.launched = 0

    @activity.defn(name=CHECK_DEPENDENCIES)
    async def check(self, request: GateCheckInput) -> GateCheck:
        self.checks += 1
        if self.checks < 3:
            return GateCheck(
                missing=[f"up@{self.checks}"], next_check=request.now + timedelta(hours=1)
            )
        return GateCheck(ready=True)

    @activity.defn(name=LAUNCH_DEPENDENT)
    async def launch(self, gate: GateInput) -> GateOutcome:
        self.launched += 1
        return GateOutcome(workflow_id=f"{gate.tenant}/{gate.pipeline}/x")

    @activity.defn(name=FAIL_DEPENDENT)
    async def fail(self, request: GateFailInput) -> None:
        raise AssertionError("not expected")


async def run_gate(client: Client) -> str:
    fake = FakeGate()
    queue = f"gate-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[DependencyGateWorkflow],
        activities=[fake.check, fake.launch, fake.fail],
    ):
        gate = GateInput(tenant="t", pipeline="down", logical_date=START, interval_end=START)
        handle = await client.start_workflow(
            DependencyGateWorkflow.run, gate, id=f"gate-test-{uuid.uuid4()}", task_queue=queue
        )
        for _ in range(2):  # each upstream success signals the gate; it checks again at once
            while fake.checks < _ + 1:
                await asyncio.sleep(0.05)
            await handle.signal(
                DependencyGateWorkflow.upstream_succeeded,
                UpstreamSignal(pipeline="up", logical_date=START),
            )
        outcome = await asyncio.wait_for(handle.result(), timeout=20)
    assert outcome.workflow_id == "t/down/x" and fake.launched == 1 and fake.checks == 3
    return handle.id


async def test_a_gate_checks_again_on_each_upstream_signal(client: Client) -> None:
    await run_gate(client)


@pytest.mark.parametrize(
    "name",
    [
        "backfill_continue_as_new",
        "schedule_three_fires",
        "dependency_gate_signals",
        # Recorded before the "catchup-buffers" patch (missed fires were skipped) and with it.
        "schedule_catch_up_before_patch",
        "schedule_catch_up",
    ],
)
async def test_replay_saved_history(name: str, client: Client) -> None:
    path = HISTORIES / f"{name}.json"
    if not path.exists():
        if not os.environ.get("LAMINAR_RECORD_HISTORIES"):
            pytest.fail(f"{path} is missing: record it with LAMINAR_RECORD_HISTORIES=1")
        if name == "schedule_three_fires":
            workflow_id, run_id = await run_scheduler(client), None
        elif name == "dependency_gate_signals":
            workflow_id, run_id = await run_gate(client), None
        elif name.startswith("schedule_catch_up"):
            workflow_id, run_id = (await run_catch_up(client))[0], None
        else:
            workflow_id, run_id = await run_backfill(client, FakeRuns(30, 10), history_limit=60)
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        path.write_text(history.to_json())
    replayer = Replayer(
        workflows=[BackfillWorkflow, PipelineScheduleWorkflow, DependencyGateWorkflow],
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(WorkflowHistory.from_json(name, path.read_text()))
