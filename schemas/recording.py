"""Recorded run state: what the workflow reports to `record_run_event`, and the statuses the
service stores for pipelines and runs."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.run import StepResult, StepStatus


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
    from_attempt: bool = False
    """An attempt's own transition (its start or end, or the run's start it implies), with an
    id from `attempt_event_id`: written by the worker that ran the attempt, in the background,
    and again by the workflow as the backstop, whichever comes first. It never changes a step
    row that is final already, nor a run that has started (a run start) or finished."""


AttemptEventKind = Literal["started", "ended"]
_ATTEMPT_EVENTS = uuid.UUID("6b0d3c1e-57d4-4d4b-9f0e-6c1f5b7a2e10")


def attempt_event_id(
    workflow_run_id: str, step_id: str | None, attempt: int = 0, kind: AttemptEventKind = "started"
) -> str:
    """The id of an attempt's start or end (or, with no step, of the run's start), the same
    wherever it is computed: in `run_step` (from its activity info) and in the workflow."""
    name = f"{workflow_run_id}/{step_id}/{attempt}/{kind}" if step_id else f"{workflow_run_id}/run"
    return str(uuid.uuid5(_ATTEMPT_EVENTS, name))


class RecordRunEventsInput(BaseModel):
    """The one input of `record_run_event`: one workflow task's transitions, in order."""

    workflow_id: str
    events: list[RunEvent]


class RecordRunEventsResult(BaseModel):
    recorded: int
    """Events written now (already-recorded ids and unknown runs count as not written)."""
    skipped: int = 0


def run_started_event(workflow_run_id: str, at: datetime) -> RunEvent:
    """The run's start as an attempt's start implies it (recorded once, whoever is first)."""
    return RunEvent(
        event_id=attempt_event_id(workflow_run_id, None),
        at=at,
        run=RunTransition(status=RecordedRunStatus.RUNNING, at=at),
        from_attempt=True,
    )


def attempt_started_event(
    workflow_run_id: str, step_id: str, type: str, attempt: int, at: datetime
) -> RunEvent:
    return RunEvent(
        event_id=attempt_event_id(workflow_run_id, step_id, attempt, "started"),
        at=at,
        step=StepTransition(
            step_id=step_id, type=type, attempt=attempt, status=StepStatus.RUNNING, started_at=at
        ),
        from_attempt=True,
    )


def attempt_ended_event(
    workflow_run_id: str,
    step_id: str,
    type: str,
    attempt: int,
    at: datetime,
    *,
    result: StepResult | None = None,
    started_at: datetime | None = None,
    error: str | None = None,
    error_type: str | None = None,
) -> RunEvent:
    """An attempt's end: SUCCEEDED with its result, or FAILED with its error."""
    return RunEvent(
        event_id=attempt_event_id(workflow_run_id, step_id, attempt, "ended"),
        at=at,
        step=StepTransition(
            step_id=step_id,
            type=type,
            attempt=attempt,
            status=StepStatus.SUCCEEDED if result is not None else StepStatus.FAILED,
            started_at=(result.started_at if result else None) or started_at,
            finished_at=(result.finished_at if result else None) or at,
            error=error,
            error_type=error_type,
            rows_affected=result.rows_affected if result else None,
            outputs=result.outputs if result else {},
            tables=result.tables if result else {},
            log_path=result.log_path if result else None,
        ),
        from_attempt=True,
    )
