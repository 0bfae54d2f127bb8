"""Collects a run's transitions during one workflow task, for one `record_run_event` call.

Pure and deterministic: event ids come from `workflow.uuid4()` (the same on replay), times
from `workflow.now()`. The workflow notes a transition where it changes state and flushes the
batch once per workflow task.

With attempts recorded in the worker (patch `record-attempts-in-worker`), a step attempt's
start and end are noted as *backstop* events (`attempt`, `run_started`): the worker that ran
the attempt writes the same events (same ids) in the background, so they alone are no reason
to record; they go ahead of the workflow's next own transition, and at the latest with the
run's end, so the record is complete when the run is.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.recording import (
        RecordedRunStatus,
        RecordRunEventsInput,
        RunEvent,
        RunTransition,
        StepTransition,
        attempt_ended_event,
        attempt_started_event,
        run_started_event,
    )
    from schemas.run import StepResult, StepState, StepStatus


class RunRecorder:
    def __init__(self, workflow_id: str, enabled: bool) -> None:
        self.workflow_id = workflow_id
        self.enabled = enabled
        self._events: list[RunEvent] = []
        self._own = 0
        """Events in `_events` that only the workflow records (not backstop ones)."""

    def run(self, status: RecordedRunStatus, error: str | None = None) -> None:
        if self.enabled:
            now = workflow.now()
            self._add(RunEvent(event_id=self._id(), at=now,
                               run=RunTransition(status=status, at=now, error=error)))  # fmt: skip

    def step(
        self,
        state: StepState,
        *,
        attempt: int | None = None,
        status: StepStatus | None = None,
        error: str | None = None,
        error_type: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
    ) -> None:
        """The step's state now (or, with overrides, of an earlier attempt that failed)."""
        if not self.enabled:
            return
        result = state.result
        transition = StepTransition(
            step_id=state.step_id,
            type=state.type,
            attempt=max(attempt if attempt is not None else state.attempt, 1),
            status=status or state.status,
            started_at=started_at or state.started_at,
            finished_at=finished_at or state.finished_at,
            error=(error or None) if error is not None else state.error,
            error_type=error_type or state.error_type,
            rows_affected=result.rows_affected if result else None,
            outputs=result.outputs if result else {},
            tables=result.tables if result else {},
            log_path=result.log_path if result else None,
        )
        self._add(RunEvent(event_id=self._id(), at=workflow.now(), step=transition))

    def run_started(self) -> None:
        """Backstop: the run's start (the first attempt's worker records it too)."""
        if self.enabled:
            self._events.append(run_started_event(workflow.info().run_id, workflow.now()))

    def attempt_started(self, state: StepState, attempt: int) -> None:
        """Backstop: an attempt was scheduled (its worker records the start as it begins)."""
        if self.enabled:
            self._events.append(
                attempt_started_event(
                    workflow.info().run_id, state.step_id, state.type, attempt, workflow.now()
                )
            )

    def attempt_ended(
        self,
        state: StepState,
        attempt: int,
        *,
        result: StepResult | None = None,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        """Backstop: an attempt's end as the workflow saw it (its result, or its failure)."""
        if self.enabled:
            self._events.append(
                attempt_ended_event(
                    workflow.info().run_id,
                    state.step_id,
                    state.type,
                    attempt,
                    workflow.now(),
                    result=result,
                    started_at=state.started_at,
                    error=error,
                    error_type=error_type,
                )
            )

    def take(self) -> RecordRunEventsInput | None:
        """The batch noted since the last call, or None when there is nothing to record
        (backstop events alone are not: they wait for the next own transition)."""
        if not self._own:
            return None
        batch = RecordRunEventsInput(workflow_id=self.workflow_id, events=self._events)
        self._events, self._own = [], 0
        return batch

    def _add(self, event: RunEvent) -> None:
        self._events.append(event)
        self._own += 1

    @staticmethod
    def _id() -> str:
        return str(workflow.uuid4())
