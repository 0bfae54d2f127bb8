"""What the scheduler workflow and its activities exchange (one model in, one out)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class ScheduledFire(BaseModel):
    """One interval of a schedule: its run's logical date, and when it fires."""

    logical_date: datetime
    interval_end: datetime
    """The fire time (the end of the data interval), UTC."""
    wake_at: datetime
    """`interval_end` plus the schedule's jitter."""


class PlanScheduleInput(BaseModel):
    tenant: str
    pipeline: str
    cursor: datetime | None
    """The end of the last interval the schedule handled; None: just created."""
    now: datetime
    """The workflow's time (the plan never runs a fire before its timer went off)."""
    wait_until: datetime | None = None
    """Plan only from this instant on: the last second or so before a fire is waited out in
    the activity, as Temporal rounds timers shorter than 1 s up to 1 s."""


class SchedulePlan(BaseModel):
    active: bool
    """False: the pipeline is gone, archived or has no schedule (the scheduler stops)."""
    reason: str = ""
    paused: bool = False
    """The definition's `paused`."""
    overlap: str = "skip"
    cursor: datetime | None = None
    """Where a new scheduler starts (now, or before start_date with catchup)."""
    due: list[ScheduledFire] = Field(default_factory=list)
    """Intervals to start now, in order (only the latest one without catchup)."""
    next: ScheduledFire | None = None
    """The next interval to fire after `due`; None: past end_date."""


class LaunchOutcome(StrEnum):
    STARTED = "started"
    EXISTING = "existing"
    """The logical date has a run already (from any trigger): nothing new."""
    SKIPPED = "skipped"
    """overlap=skip and the previous scheduled run is still going."""
    BUSY = "busy"
    """overlap=buffer_*: the previous scheduled run is still going; try again later."""
    REFUSED = "refused"
    """The launcher refused (pipeline paused, archived, invalid)."""


class LaunchScheduledInput(BaseModel):
    tenant: str
    pipeline: str
    fire: ScheduledFire
    overlap: str


class LaunchScheduledResult(BaseModel):
    outcome: LaunchOutcome
    workflow_id: str | None = None
    detail: str = ""


class SchedulerInput(BaseModel):
    tenant: str
    pipeline: str
    cursor: datetime | None = None
    paused: bool | None = None
    """Set by pause/unpause (overrides the definition's `paused` until it changes)."""
    buffered: list[ScheduledFire] = Field(default_factory=list)
    fired: int = 0


class PauseSignal(BaseModel):
    paused: bool


class RefreshSignal(BaseModel):
    """The definition changed: plan again. A pause/unpause stays in force unless the
    definition's own `paused` changed (the latest action wins)."""


class SchedulerState(BaseModel):
    tenant: str
    pipeline: str
    paused: bool
    cursor: datetime | None
    buffered: list[ScheduledFire]
    fired: int
    next: ScheduledFire | None
    last_outcomes: list[str]


class SchedulerResult(BaseModel):
    reason: str


class Reprocess(StrEnum):
    MISSING = "missing"
    """Only logical dates without a run."""
    FAILED = "failed"
    """Dates without a run, and dates whose run failed or was cancelled (run again)."""
    ALL = "all"
    """Every date (finished runs run again; a run still going is left alone)."""


class BackfillOrder(StrEnum):
    FORWARD = "forward"
    REVERSE = "reverse"


class BackfillSpec(BaseModel):
    """What a backfill covers; its id is derived from it (the same backfill twice is one)."""

    tenant: str
    pipeline: str
    start: datetime
    end: datetime
    max_concurrency: int = Field(4, ge=1, le=1000)
    reprocess: Reprocess = Reprocess.MISSING
    order: BackfillOrder = BackfillOrder.FORWARD
    params: dict[str, Any] = Field(default_factory=dict)


class BackfillItem(BaseModel):
    logical_date: datetime
    interval_end: datetime
    workflow_id: str
    rerun_of: str | None = None
    """The workflow id of the date's earlier run that this one runs again."""


class BackfillCounts(BaseModel):
    planned: int = 0
    skipped: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class BackfillInput(BaseModel):
    backfill_id: str
    spec: BackfillSpec
    cursor: datetime | None = None
    """The last interval enumerated (its logical date): the next page starts after it."""
    exhausted: bool = False
    queue: list[BackfillItem] = Field(default_factory=list)
    in_flight: list[str] = Field(default_factory=list)
    counts: BackfillCounts = Field(default_factory=BackfillCounts)
    total: int | None = None
    peak_in_flight: int = 0
    paused: bool = False
    cancelling: bool = False
    announced: bool = False
    history_limit: int = 8000
    """History events after which the workflow continues as new."""


class BackfillPageInput(BaseModel):
    backfill_id: str
    spec: BackfillSpec
    cursor: datetime | None
    limit: int
    count_total: bool = False


class BackfillPage(BaseModel):
    items: list[BackfillItem]
    skipped: list[datetime]
    cursor: datetime | None
    exhausted: bool
    total: int | None = None


class BackfillLaunchInput(BaseModel):
    backfill_id: str
    spec: BackfillSpec
    item: BackfillItem


class BackfillLaunchResult(BaseModel):
    workflow_id: str
    status: str
    """The run's recorded status (an existing run may have finished already)."""
    refused: str | None = None


class RunsWaitInput(BaseModel):
    workflow_ids: list[str]
    timeout_seconds: float = 5.0


class RunsWaitResult(BaseModel):
    finished: dict[str, str] = Field(default_factory=dict)
    """workflow id -> final status, for the runs that have finished."""


class RunsCancelInput(BaseModel):
    workflow_ids: list[str]


class BackfillEventInput(BaseModel):
    backfill_id: str
    event_id: str
    tenant: str
    pipeline: str
    type: str
    status: str
    reason: str


class BackfillProgress(BaseModel):
    backfill_id: str
    pipeline: str
    state: str
    """RUNNING, PAUSED, CANCELLING, COMPLETED, CANCELLED."""
    start: datetime
    end: datetime
    max_concurrency: int
    reprocess: str
    order: str
    total: int | None
    counts: BackfillCounts
    in_flight: int
    peak_in_flight: int
    queued: int


class Empty(BaseModel):
    pass


class GateInput(BaseModel):
    """A downstream run waiting for its upstream runs (one gate per pipeline and date)."""

    tenant: str
    pipeline: str
    logical_date: datetime
    interval_end: datetime
    trigger: str = "dependency"
    """Who opened the gate: `schedule` (the downstream's own fire) or `dependency`."""
    waiting_since: datetime | None = None
    """Carried over continue-as-new: when the gate opened."""


class GateFailInput(BaseModel):
    gate: GateInput
    reason: str


class GateCheckInput(BaseModel):
    gate: GateInput
    waiting_since: datetime
    now: datetime


class GateCheck(BaseModel):
    ready: bool = False
    """Every upstream run in the interval has succeeded (and the interval has ended)."""
    missing: list[str] = Field(default_factory=list)
    """`pipeline@logical date` of the upstream runs not (yet) succeeded."""
    expired: list[str] = Field(default_factory=list)
    """The missing runs whose dependency's wait timeout has passed."""
    next_check: datetime | None = None
    """When to look again at the latest (a deadline, or the interval's end)."""
    gone: str | None = None
    """The downstream pipeline no longer exists or has no dependencies: stop."""


class GateOutcome(BaseModel):
    workflow_id: str | None = None
    detail: str = ""


class UpstreamSignal(BaseModel):
    pipeline: str
    logical_date: datetime
