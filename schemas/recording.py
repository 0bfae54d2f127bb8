"""Recorded run state: what the workflow reports to `record_run_event`, and the statuses the
service stores for pipelines and runs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from schemas.run import StepStatus


class PipelineStatus(StrEnum):
    DRAFT = "DRAFT"
    VALIDATED = "VALIDATED"
    SCHEDULED = "SCHEDULED"
    PAUSED = "PAUSED"
    ARCHIVED = "ARCHIVED"


class RecordedRunStatus(StrEnum):
    """A run as the service reports it (the workflow's own statuses map onto these)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


RUN_FINISHED = frozenset(
    {RecordedRunStatus.SUCCEEDED, RecordedRunStatus.FAILED, RecordedRunStatus.CANCELLED}
)


class StepTransition(BaseModel):
    """One step attempt's state at the moment it changed (upserted by (step, attempt))."""

    step_id: str
    type: str
    attempt: int
    status: StepStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    error_type: str | None = None
    rows_affected: int | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    tables: dict[str, str] = Field(default_factory=dict)
    """Output name -> warehouse table (python `outputs:`): reused by a retry."""
    log_path: str | None = None
    marked_by: str | None = None
    """Set when a person marked the step (succeeded or skipped) instead of it running."""
    mark_reason: str | None = None


class RunTransition(BaseModel):
    status: RecordedRunStatus
    at: datetime
    error: str | None = None


class RunEvent(BaseModel):
    """One state change of a run. `event_id` comes from `workflow.uuid4()`: a replayed or
    retried recording carries the same ids, and an id already recorded is skipped."""

    event_id: str
    at: datetime
    run: RunTransition | None = None
    step: StepTransition | None = None


class RecordRunEventsInput(BaseModel):
    """The one input of `record_run_event`: one workflow task's transitions, in order."""

    workflow_id: str
    events: list[RunEvent]


class RecordRunEventsResult(BaseModel):
    recorded: int
    """Events written now (already-recorded ids and unknown runs count as not written)."""
    skipped: int = 0
