"""No-op steps: DAG join points, and the benchmark's measure of pure orchestration overhead."""

from __future__ import annotations

from schemas.pipeline import NoopStep
from steps.base import StepContext, StepResult


class NoopExecutor:
    async def execute(self, step: NoopStep, ctx: StepContext) -> StepResult:
        return StepResult()
