"""A scripted stand-in for step execution: `noop` steps whose executor sleeps or fails on cue,
run through the real `run_step` activity and PipelineRunWorkflow. Shared by the workflow
integration, replay and time-skipping tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.worker import Worker

from activities.pools import PoolActivities
from activities.recording import AttemptRecorder, RecordingActivities
from activities.steps import StepActivities
from schemas.loading import validate_pipeline
from schemas.pipeline import NoopStep, SensorStep
from schemas.run import RunContext, RunInput, StepResult
from steps.base import StepContext, StepError
from workflows.pipeline_run import PipelineRunWorkflow


@dataclass
class Behavior:
    sleep: float = 0.0
    fail_times: int = 0
    retryable: bool = True
    block_first: float = 0.0
    """Block the worker's event loop this long on the first attempt: no heartbeats go out."""
    unmet_checks: int = 0
    """A sensor step: this many checks find its condition unmet, the next ones met."""
    writes: tuple[str, ...] = ()
    """Warehouse tables the step reports it wrote (`StepResult.written`)."""


@dataclass
class ScriptedExecutor:
    behaviors: dict[str, Behavior] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    contexts: list[StepContext] = field(default_factory=list)
    """The context of every call, in order."""

    async def execute(self, step: NoopStep | SensorStep, ctx: StepContext) -> StepResult:
        behavior = self.behaviors.get(step.id, Behavior())
        self.calls.append((step.id, ctx.attempt))
        self.contexts.append(ctx)
        start = time.monotonic()
        if behavior.block_first and len(self.calls) == 1:
            time.sleep(behavior.block_first)  # deliberately blocking: the heartbeat stops
        await asyncio.sleep(behavior.sleep)
        self.intervals[step.id] = (start, time.monotonic())
        if self.failures.get(step.id, 0) < behavior.fail_times:
            self.failures[step.id] = self.failures.get(step.id, 0) + 1
            raise StepError(
                f"scripted failure {self.failures[step.id]}", retryable=behavior.retryable
            )
        if step.type == "sensor":
            checks = sum(1 for called, _ in self.calls if called == step.id)
            return StepResult(outputs={"met": checks > behavior.unmet_checks})
        written = list(behavior.writes)
        if ctx.run.item_index is not None:  # a for_each instance: echo its item
            outputs = {"attempt": ctx.attempt, "item": ctx.run.item, "index": ctx.run.item_index}
            return StepResult(outputs=outputs, written=written)
        return StepResult(outputs={"attempt": ctx.attempt}, written=written)


def pipeline(steps: list[dict[str, Any]], **extra: Any) -> Any:
    """Scripted steps stand in for regular steps (a real SQL or Python step), so they run as
    regular activities unless a test says `local: true` (noop's own default is local)."""
    for step in steps:
        step.setdefault("type", "noop")
        step.setdefault("local", False)
        if isinstance(step.get("compensate"), dict):
            step["compensate"].setdefault("local", False)
    return validate_pipeline({"name": "test", "steps": steps, **extra}, source_dir=Path("."))


def run_input(definition: Any, run_id: str, *, record: bool = False) -> RunInput:
    now = datetime(2026, 1, 31, tzinfo=UTC)
    context = RunContext.manual(definition.name, run_id, now)
    return RunInput(pipeline=definition, context=context, source_dir=".", record=record)


def worker_for(
    client: Client,
    executor: ScriptedExecutor,
    tmp_path: Path,
    queue: str,
    sessions: sessionmaker[Session] | None = None,
    attempts: AttemptRecorder | None = None,
) -> Worker:
    """A worker with the scripted executor; with `sessions`, it also records run state (the
    steps' attempts through `attempts`, or a recorder of its own)."""
    if attempts is None and sessions is not None:
        attempts = AttemptRecorder(sessions)
    activities = StepActivities(
        {"noop": executor, "sensor": executor},
        tmp_path / "work",
        client,
        record_attempts=attempts.submit if attempts is not None else None,
    )
    pools = PoolActivities(sessions)
    registered: list[Any] = [activities.run_step, pools.acquire_pool_slot, pools.release_pool_slot]
    if sessions is not None:
        registered.append(RecordingActivities(sessions, attempts=attempts).record_run_event)
    return Worker(
        client,
        task_queue=queue,
        workflows=[PipelineRunWorkflow],
        activities=registered,
    )
