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

from temporalio.client import Client
from temporalio.worker import Worker

from activities.steps import StepActivities
from schemas.loading import validate_pipeline
from schemas.pipeline import NoopStep
from schemas.run import RunContext, RunInput, StepResult
from steps.base import StepContext, StepError
from workflows.pipeline_run import PipelineRunWorkflow


@dataclass
class Behavior:
    sleep: float = 0.0
    fail_times: int = 0
    retryable: bool = True


@dataclass
class ScriptedExecutor:
    behaviors: dict[str, Behavior] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    async def execute(self, step: NoopStep, ctx: StepContext) -> StepResult:
        behavior = self.behaviors.get(step.id, Behavior())
        self.calls.append((step.id, ctx.attempt))
        start = time.monotonic()
        await asyncio.sleep(behavior.sleep)
        self.intervals[step.id] = (start, time.monotonic())
        if self.failures.get(step.id, 0) < behavior.fail_times:
            self.failures[step.id] = self.failures.get(step.id, 0) + 1
            raise StepError(
                f"scripted failure {self.failures[step.id]}", retryable=behavior.retryable
            )
        return StepResult(outputs={"attempt": ctx.attempt})


def pipeline(steps: list[dict[str, Any]], **extra: Any) -> Any:
    for step in steps:
        step.setdefault("type", "noop")
    return validate_pipeline({"name": "test", "steps": steps, **extra}, source_dir=Path("."))


def run_input(definition: Any, run_id: str) -> RunInput:
    now = datetime(2026, 1, 31, tzinfo=UTC)
    context = RunContext.manual(definition.name, run_id, now)
    return RunInput(pipeline=definition, context=context, source_dir=".")


def worker_for(client: Client, executor: ScriptedExecutor, tmp_path: Path, queue: str) -> Worker:
    activities = StepActivities({"noop": executor}, tmp_path / "work", client)
    return Worker(
        client,
        task_queue=queue,
        workflows=[PipelineRunWorkflow],
        activities=[activities.run_step],
    )
