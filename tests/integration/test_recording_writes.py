"""`record_many`'s writes (SQLAlchemy Core: one pass over the events, then a few statements)
on real SQLite and PostgreSQL: what one batch, several batches and later batches leave in the
run, step attempt and outbox rows."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pipeline_service.db.models import OutboxEvent, Run, StepRun
from pipeline_service.db.recording import record_many, record_run_events
from pipeline_service.db.session import transaction
from schemas.recording import (
    RecordedRunStatus,
    RecordRunEventsInput,
    RecordRunEventsResult,
    RunEvent,
    RunTransition,
    StepTransition,
    attempt_ended_event,
    attempt_started_event,
    run_started_event,
)
from schemas.run import StepResult, StepStatus
from tests.integration.records import add_run

AT = datetime(2026, 3, 1, 9, tzinfo=UTC)


def _run(sessions: sessionmaker[Session]) -> str:
    with transaction(sessions) as session:
        return add_run(session).workflow_id


def _event(at: datetime = AT, **change: object) -> RunEvent:
    return RunEvent(event_id=str(uuid.uuid4()), at=at, **change)


def _run_change(status: RecordedRunStatus, at: datetime = AT, **extra: object) -> RunEvent:
    return _event(at, run=RunTransition(status=status, at=at, **extra))


def _step(step_id: str, attempt: int, status: StepStatus, **extra: object) -> RunEvent:
    change = {"step_id": step_id, "type": "noop", "attempt": attempt, "status": status, **extra}
    return _event(step=StepTransition.model_validate(change))


def _record(
    sessions: sessionmaker[Session], workflow_id: str
) -> tuple[Run, list[StepRun], list[OutboxEvent]]:
    with sessions() as session:
        run = session.scalars(select(Run).where(Run.workflow_id == workflow_id)).one()
        steps = session.scalars(
            select(StepRun).where(StepRun.run_id == run.id).order_by(StepRun.id)
        ).all()
        events = session.scalars(
            select(OutboxEvent).where(OutboxEvent.key == run.public_id).order_by(OutboxEvent.seq)
        ).all()
        session.expunge_all()
        return run, list(steps), list(events)


def test_an_attempts_start_and_end_in_one_batch_make_one_row_and_two_events(
    sessions: sessionmaker[Session],
) -> None:
    workflow_id = _run(sessions)
    temporal_run = str(uuid.uuid4())
    ended_at = AT + timedelta(seconds=3)
    result = StepResult(
        started_at=AT, finished_at=ended_at, rows_affected=7, outputs={"n": 7}, log_path="a.log"
    )
    events = [
        run_started_event(temporal_run, AT),
        attempt_started_event(temporal_run, "a", "noop", 1, AT),
        attempt_ended_event(temporal_run, "a", "noop", 1, ended_at, result=result),
    ]
    with transaction(sessions) as session:
        (written,) = record_many(
            session, [RecordRunEventsInput(workflow_id=workflow_id, events=events)]
        )
    assert (written.recorded, written.skipped) == (3, 0)
    run, rows, outbox = _record(sessions, workflow_id)
    assert (run.status, run.started_at) == ("RUNNING", AT)
    assert [(r.step_id, r.attempt, r.status, r.started_at, r.finished_at) for r in rows] == [
        ("a", 1, "SUCCEEDED", AT, ended_at)
    ]
    assert (rows[0].rows_affected, rows[0].outputs, rows[0].tables, rows[0].log_path) == (
        7, {"n": 7}, {}, "a.log"
    )  # fmt: skip
    assert [e.event_id for e in outbox] == [e.event_id for e in events]
    assert [e.type for e in outbox] == [
        "PIPELINE_STARTED", "PIPELINE_STEP_STARTED", "PIPELINE_STEP_COMPLETED"
    ]  # fmt: skip
    # The payloads consumers read, field for field.
    names = {
        "tenant": outbox[0].payload["tenant"],
        "pipeline": "p",
        "version": 1,
        "run_id": run.public_id,
        "workflow_id": workflow_id,
        "logical_date": "2026-01-31T00:00:00+00:00",
    }
    assert outbox[0].payload == {
        **names, "time": AT.isoformat(), "status": "RUNNING", "error": None, "duration_ms": None
    }  # fmt: skip
    assert outbox[1].payload == {
        **names, "time": AT.isoformat(), "step_id": "a", "step_type": "noop", "attempt": 1,
        "status": "RUNNING", "error": None, "error_type": None, "duration_ms": None,
    }  # fmt: skip
    assert outbox[2].payload == {
        **names, "time": ended_at.isoformat(), "step_id": "a", "step_type": "noop",
        "attempt": 1, "status": "SUCCEEDED", "error": None, "error_type": None,
        "duration_ms": 3000,
    }  # fmt: skip
    assert {(e.tenant_id, e.actor) for e in outbox} == {(run.tenant_id, "test-key")}


def test_a_later_batch_updates_the_attempt_row_keeping_what_it_does_not_say(
    sessions: sessionmaker[Session],
) -> None:
    """An attempt's end without a start time or log path keeps the row's; a mark keeps the
    attempt's times and records who marked it and why (with the actor on its event)."""
    workflow_id = _run(sessions)
    with transaction(sessions) as session:
        record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            _run_change(RecordedRunStatus.RUNNING),
            _step("a", 1, StepStatus.RUNNING, started_at=AT, log_path="a.log"),
        ]))  # fmt: skip
    ended = AT + timedelta(seconds=1)
    with transaction(sessions) as session:
        record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            _step("a", 1, StepStatus.FAILED, finished_at=ended, error="boom", error_type="E"),
            _run_change(RecordedRunStatus.FAILED, ended, error="a failed"),
        ]))  # fmt: skip
    _, rows, _ = _record(sessions, workflow_id)
    assert [(r.status, r.started_at, r.finished_at, r.error, r.log_path) for r in rows] == [
        ("FAILED", AT, ended, "boom", "a.log")
    ]
    with transaction(sessions) as session:
        record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            _step("a", 1, StepStatus.SKIPPED, marked_by="ops", mark_reason="not needed"),
        ]))  # fmt: skip
    run, rows, outbox = _record(sessions, workflow_id)
    assert run.status == "FAILED" and rows[0].id is not None and len(rows) == 1
    row = rows[0]
    assert (row.status, row.started_at, row.finished_at, row.log_path) == (
        "SKIPPED", AT, ended, "a.log"
    )  # fmt: skip
    assert (row.error, row.marked_by, row.mark_reason) == (None, "ops", "not needed")
    assert outbox[-1].actor == "ops"
    assert outbox[-1].payload["marked_by"] == "ops"
    assert outbox[-1].payload["reason"] == "not needed"
    assert outbox[-1].payload["duration_ms"] == 1000


def test_recorded_and_new_ids_mixed_write_only_the_new(sessions: sessionmaker[Session]) -> None:
    workflow_id = _run(sessions)
    first = [_run_change(RecordedRunStatus.RUNNING), _step("a", 1, StepStatus.RUNNING)]
    with transaction(sessions) as session:
        record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=first))
    ended = AT + timedelta(seconds=2)
    mixed = [
        first[0],
        first[1],
        _step("a", 1, StepStatus.SUCCEEDED, started_at=AT, finished_at=ended),
        _run_change(RecordedRunStatus.SUCCEEDED, ended),
    ]
    with transaction(sessions) as session:
        result = record_run_events(
            session, RecordRunEventsInput(workflow_id=workflow_id, events=mixed)
        )
    assert (result.recorded, result.skipped) == (2, 2)
    run, rows, outbox = _record(sessions, workflow_id)
    assert (run.status, run.started_at, run.finished_at) == ("SUCCEEDED", AT, ended)
    assert [(r.status, r.started_at, r.finished_at) for r in rows] == [("SUCCEEDED", AT, ended)]
    assert [e.event_id for e in outbox] == [e.event_id for e in mixed]


def test_a_recorded_id_in_a_batch_assumed_new_refuses_it_whole(
    sessions: sessionmaker[Session],
) -> None:
    """The caller's signal to read recorded ids and write again: nothing of the batch stays."""
    workflow_id = _run(sessions)
    recorded = _run_change(RecordedRunStatus.RUNNING)
    with transaction(sessions) as session:
        record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[recorded]))
    batch = RecordRunEventsInput(
        workflow_id=workflow_id,
        events=[_step("a", 1, StepStatus.RUNNING), recorded, _run_change(RecordedRunStatus.FAILED)],
    )
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        record_run_events(session, batch, assume_new=True)
    run, rows, outbox = _record(sessions, workflow_id)
    assert (run.status, rows, [e.event_id for e in outbox]) == ("RUNNING", [], [recorded.event_id])
    with transaction(sessions) as session:
        result = record_run_events(session, batch)
    assert (result.recorded, result.skipped) == (2, 1)
    run, rows, outbox = _record(sessions, workflow_id)
    assert run.status == "FAILED" and [r.status for r in rows] == ["RUNNING"]


def test_two_runs_in_one_call_each_get_their_own_rows_in_order(
    sessions: sessionmaker[Session],
) -> None:
    first, second = _run(sessions), _run(sessions)
    later = AT + timedelta(seconds=1)
    batches = [
        RecordRunEventsInput(workflow_id=first, events=[
            _run_change(RecordedRunStatus.RUNNING),
            _step("a", 1, StepStatus.RUNNING, started_at=AT),
        ]),
        RecordRunEventsInput(workflow_id=second, events=[
            _run_change(RecordedRunStatus.RUNNING, later),
            _step("a", 1, StepStatus.RUNNING, started_at=later),
            _step("a", 1, StepStatus.FAILED, started_at=later, finished_at=later, error="x"),
            _run_change(RecordedRunStatus.FAILED, later, error="x"),
        ]),
        RecordRunEventsInput(workflow_id=first, events=[  # the same run again, later on
            _step("a", 1, StepStatus.SUCCEEDED, started_at=AT, finished_at=later),
            _step("b", 1, StepStatus.RUNNING, started_at=later),
        ]),
        RecordRunEventsInput(workflow_id=f"nobody/{uuid.uuid4()}", events=[
            _run_change(RecordedRunStatus.RUNNING),
        ]),
    ]  # fmt: skip
    with transaction(sessions) as session:
        results = record_many(session, batches)
    assert [(r.recorded, r.skipped) for r in results] == [(2, 0), (4, 0), (2, 0), (0, 1)]
    run, rows, outbox = _record(sessions, first)
    assert (run.status, run.started_at, run.finished_at) == ("RUNNING", AT, None)
    assert [(r.step_id, r.status, r.started_at, r.finished_at) for r in rows] == [
        ("a", "SUCCEEDED", AT, later), ("b", "RUNNING", later, None)
    ]  # fmt: skip
    assert [e.event_id for e in outbox] == [
        e.event_id for b in (batches[0], batches[2]) for e in b.events
    ]
    run, rows, outbox = _record(sessions, second)
    assert (run.status, run.started_at, run.finished_at, run.error) == ("FAILED", later, later, "x")
    assert [(r.step_id, r.status, r.error) for r in rows] == [("a", "FAILED", "x")]
    assert [e.event_id for e in outbox] == [e.event_id for e in batches[1].events]


def test_a_step_waiting_to_retry_makes_the_run_retrying_until_one_runs(
    sessions: sessionmaker[Session],
) -> None:
    workflow_id = _run(sessions)

    def record(*events: RunEvent) -> str:
        with transaction(sessions) as session:
            record_run_events(
                session, RecordRunEventsInput(workflow_id=workflow_id, events=list(events))
            )
        return _record(sessions, workflow_id)[0].status

    assert record(_run_change(RecordedRunStatus.RUNNING), _step("a", 1, StepStatus.FAILED)) == (
        "RUNNING"
    )
    assert record(_step("a", 2, StepStatus.RETRYING)) == "RETRYING"
    assert record(_step("b", 1, StepStatus.SUCCEEDED)) == "RETRYING"  # not a start
    assert record(_step("a", 2, StepStatus.RUNNING)) == "RUNNING"
    # Within one batch, as the events come.
    assert record(_step("a", 3, StepStatus.RETRYING), _step("a", 3, StepStatus.RUNNING)) == (
        "RUNNING"
    )
    assert record(_step("a", 3, StepStatus.FAILED), _step("a", 4, StepStatus.RETRYING)) == (
        "RETRYING"
    )
    # A step retrying after the run's end changes nothing of the run.
    assert record(_run_change(RecordedRunStatus.CANCELLED), _step("a", 5, StepStatus.RETRYING)) == (
        "CANCELLED"
    )
    _, _, outbox = _record(sessions, workflow_id)
    assert [e.payload["status"] for e in outbox if e.payload.get("step_id") is None] == [
        "RUNNING", "CANCELLED"
    ]  # fmt: skip


def test_a_run_never_finishes_before_it_started_and_durations_are_never_negative(
    sessions: sessionmaker[Session],
) -> None:
    """The start was recorded with a step worker's clock, ahead of the workflow's."""
    workflow_id = _run(sessions)
    ahead, behind = AT + timedelta(seconds=5), AT
    temporal_run = str(uuid.uuid4())
    with transaction(sessions) as session:
        record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            run_started_event(temporal_run, ahead),
        ]))  # fmt: skip
    with transaction(sessions) as session:
        record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            _step("a", 1, StepStatus.SUCCEEDED, started_at=ahead, finished_at=behind),
            _run_change(RecordedRunStatus.SUCCEEDED, behind),
        ]))  # fmt: skip
    run, _, outbox = _record(sessions, workflow_id)
    assert (run.started_at, run.finished_at) == (ahead, ahead)
    assert [e.payload["duration_ms"] for e in outbox] == [None, 0, 0]


def test_a_run_held_by_the_caller_shows_what_was_recorded(sessions: sessionmaker[Session]) -> None:
    """A caller that holds the run's ORM object in its session (as `quotas.end_run`'s callers
    do) sees the recorded columns on it, without a refresh."""
    workflow_id = _run(sessions)
    with transaction(sessions) as session:
        held = session.scalars(select(Run).where(Run.workflow_id == workflow_id)).one()
        record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            _run_change(RecordedRunStatus.CANCELLED, error="cancelled while waiting"),
        ]))  # fmt: skip
        assert (held.status, held.finished_at, held.error) == (
            "CANCELLED", AT, "cancelled while waiting"
        )  # fmt: skip
    assert held.status == "CANCELLED"  # after the commit, from the object as it was left


def test_the_callers_pending_changes_are_written_first(sessions: sessionmaker[Session]) -> None:
    """A change the caller made to the run in its session and not yet flushed is what the
    recording reads, and the recording's change is not overwritten by it afterwards."""
    workflow_id = _run(sessions)
    with transaction(sessions) as session:
        held = session.scalars(select(Run).where(Run.workflow_id == workflow_id)).one()
        held.status = "RUNNING"
        record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            _step("a", 2, StepStatus.RETRYING),
        ]))  # fmt: skip
        assert held.status == "RETRYING"
    assert _record(sessions, workflow_id)[0].status == "RETRYING"


def test_two_writers_of_one_run_take_turns_and_the_first_end_stands(
    sessions: sessionmaker[Session],
) -> None:
    """A run's end (say, by the reconciler) and a late "run started" from a step's worker, in two
    transactions at once: the second reads the run as the first left it. On PostgreSQL the first
    holds the run's row until it commits (without that, the late start read QUEUED, waited at
    its UPDATE, then wrote RUNNING over FAILED); SQLite's writers take turns from BEGIN on."""
    workflow_id = _run(sessions)
    ended = RecordRunEventsInput(
        workflow_id=workflow_id,
        events=[_run_change(RecordedRunStatus.FAILED, error="terminated in Temporal")],
    )
    late_start = RecordRunEventsInput(
        workflow_id=workflow_id, events=[run_started_event(str(uuid.uuid4()), AT)]
    )
    outcome: list[object] = []

    def late() -> None:
        try:
            with transaction(sessions) as session:
                outcome.extend(record_many(session, [late_start]))
        except Exception as exc:  # the assertion below shows it
            outcome.append(exc)

    first = sessions()
    try:
        first.begin()
        record_many(first, [ended])
        other = threading.Thread(target=late)
        other.start()
        other.join(0.5)
        assert other.is_alive()  # waits for the first writer (a lock, or SQLite's BEGIN)
        first.commit()
    finally:
        first.close()
    other.join(10)
    assert not other.is_alive()
    (result,) = outcome
    assert isinstance(result, RecordRunEventsResult) and result.recorded == 0
    run, _, events = _record(sessions, workflow_id)
    assert (run.status, run.error, run.started_at) == ("FAILED", "terminated in Temporal", None)
    assert [e.type for e in events] == ["PIPELINE_FAILED"]
