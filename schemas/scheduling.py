"""What the scheduler workflow and its activities exchange (one model in, one out)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

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
