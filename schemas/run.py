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
    EVENT = "event"


class ReplaySource(BaseModel):
    """Where a dead-letter replay run's rows are: the quarantine table of one quality check,
    filtered to the run that quarantined them (`{{ replay.* }}` in templates)."""

    run_id: str
    """The original run's id (`_laminar_run_id` of its quarantined rows)."""
    step: str
    check: str
    schema_name: str = Field(alias="schema")
    table: str

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)


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
    replay: ReplaySource | None = None
    """Set on a dead-letter replay run (`laminar quarantine replay`): where the fixed rows are."""
    item: Any = None
    """The item of a `for_each` instance (`{{ item }}`); None outside one."""
    item_index: int | None = None
    """The index of a `for_each` instance's item (`{{ item_index }}`); None outside one."""

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


class FanOut(BaseModel):
    """A child run of one batch of a `for_each` step's instances (items `offset`, `offset+1`...)."""

    step_id: str
    items: list[Any]
    offset: int = 0
    upstream: dict[str, UpstreamResult] = Field(default_factory=dict)
    """The results of the upstream steps the step's templates refer to, from the parent run."""
    fail_fast: bool = False
    """The parent pipeline fails fast: the first failed instance cancels the others."""


class RunInput(BaseModel):
    """The one input of PipelineRunWorkflow. The definition is fixed for the run's lifetime."""

    pipeline: PipelineDefinition
    context: RunContext
    source_dir: str
    """Directory the definition was loaded from; script paths resolve (and stay) inside it."""
    max_parallelism: int | None = None
    reuse: dict[str, StepResult] = Field(default_factory=dict)
    """Steps done in an earlier run (retry from failure, re-run from a step): they count as
    SUCCEEDED with these results and do not run again."""
    record: bool = False
    """Record every transition in the service database (`record_run_event`). Off for runs
    started before recording existed (their histories have no such calls) and for `laminar
    run` until it embeds the service."""
    fan_out: FanOut | None = None
    """Set on the child runs of a `for_each` step: run these instances of the step, not the
    pipeline (their transitions are recorded under the parent's run id)."""


class StepResult(BaseModel):
    """What a step reports back: small facts and references, never data sets."""

    rows_affected: int | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    """The step's result: a python script's JSON result; {"statements": n} for SQL."""
    tables: dict[str, str] = Field(default_factory=dict)
    """Output name -> the warehouse table it was loaded into (python `outputs:`)."""
    written: list[str] = Field(default_factory=list)
    """Other tables of the worker's DuckDB warehouse the step created or wrote (a `sql` step's
    `CREATE TABLE`, `INSERT INTO`...): found only with an artifact store, which they go to so
    that a downstream step on another worker can import them. Not a templating name."""
    log_path: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 1


class UpstreamResult(BaseModel):
    """What a later step's templates see of an upstream step: `steps.<id>.result.<key>` and
    `steps.<id>.outputs.<name>`."""

    result: dict[str, Any] = Field(default_factory=dict)
    tables: dict[str, str] = Field(default_factory=dict)


class RunStepInput(BaseModel):
    """The one input of the `run_step` activity."""

    step: Step
    context: RunContext
    source_dir: str
    attempt_offset: int = 0
    """Attempts before this activity execution: the attempt number is offset + Temporal's."""
    compensation: bool = False
    upstream: dict[str, UpstreamResult] = Field(default_factory=dict)
    """Results of the upstream steps this step's templates refer to (only those: small)."""
    instance: str | None = None
    """The `for_each` instance (`<id>[<index>]`) this runs; `step` carries the step's own id."""
    handoff_tables: dict[str, str] = Field(default_factory=dict)
    """Warehouse table -> the upstream step (any ancestor) that last wrote it in this run, from
    the ancestors' `StepResult.written`: what a DuckDB step may import from the artifact store."""
    report_retries: bool = True
    """Signal the workflow when an attempt fails and Temporal retries it: only for runs that
    started before the workflow drove retries itself (it sees every failed attempt now)."""
    step_started_at: datetime | None = None
    """When the step's first attempt was started (the workflow's clock, the same for every
    attempt); None in runs from before the workflow passed it (patch "step-started-at")."""
    record_attempt: bool = False
    """Hand this attempt's start and end to the worker's background recorder (runs recorded
    with patch `record-attempts-in-worker`): the step does not wait for the database, and the
    workflow records the same events again (same ids) when it next records anything."""


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
    failure_ignored: bool = False
    """FAILED with `on_failure: ignore`: the run and the step's dependants go on as if it
    had succeeded."""


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
