"""Runs: what starts one, what a step gets and returns, and the live state a run reports."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.pipeline import PipelineDefinition, Step

DEFAULT_TENANT = "default"


class RunStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


class StepStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"
    CANCELLED = "CANCELLED"


STEP_ACTIVE = frozenset({StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.COMPENSATING})
"""Statuses of a step with an attempt in flight."""


class Trigger(StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    DEPENDENCY = "dependency"
    BACKFILL = "backfill"


class RunContext(BaseModel):
    """Who and when a run is for: everything templates and steps may see of the run."""

    model_config = ConfigDict(frozen=True)

    tenant: str = DEFAULT_TENANT
    pipeline: str
    run_id: str
    """The Temporal workflow id: `{tenant}/{pipeline}/{logical_date}` for dated runs."""
    trigger: Trigger = Trigger.MANUAL
    logical_date: datetime
    data_interval_start: datetime
    data_interval_end: datetime
    params: dict[str, Any] = Field(default_factory=dict)
    """Resolved values: defaults merged with the run's overrides, coerced to the declared types
    (JSON-native: dates are ISO `YYYY-MM-DD` text)."""

    @classmethod
    def manual(
        cls,
        pipeline: str,
        run_id: str,
        logical_date: datetime,
        params: dict[str, Any] | None = None,
    ) -> RunContext:
        """A run started by hand: its data interval is the instant of its logical date."""
        return cls(
            pipeline=pipeline,
            run_id=run_id,
            trigger=Trigger.MANUAL,
            logical_date=logical_date,
            data_interval_start=logical_date,
            data_interval_end=logical_date,
            params=params or {},
        )


class RunInput(BaseModel):
    """The one input of PipelineRunWorkflow. The definition is fixed for the run's lifetime."""

    pipeline: PipelineDefinition
    context: RunContext
    source_dir: str
    """Directory the definition was loaded from; script paths resolve (and stay) inside it."""
    max_parallelism: int | None = None


class StepResult(BaseModel):
    """What a step reports back: small facts and references, never data sets."""

    rows_affected: int | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    log_path: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 1


class RunStepInput(BaseModel):
    """The one input of the `run_step` activity."""

    step: Step
    context: RunContext
    source_dir: str
    attempt_offset: int = 0
    """Attempts already used by earlier activity executions of this step (a lost worker)."""
    compensation: bool = False


class StepAttemptFailed(BaseModel):
    """Signal from a step attempt that failed and will be retried (feeds RETRYING in the query)."""

    step_id: str
    attempt: int
    error: str


class StepState(BaseModel):
    step_id: str
    type: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    error_type: str | None = None
    result: StepResult | None = None


class RunState(BaseModel):
    """Answer of the `state` query: the live state of a run, step by step."""

    run_id: str
    pipeline: str
    status: RunStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    steps: list[StepState]
    error: str | None = None

    def step(self, step_id: str) -> StepState:
        for state in self.steps:
            if state.step_id == step_id:
                return state
        raise KeyError(step_id)


class RunSummary(RunState):
    """The result of a finished run (also carried as the details of a PipelineFailed error)."""
