"""Step attempts recorded by the worker that runs them (patch `record-attempts-in-worker`):
`run_step` hands each attempt's start and end to the worker's background recorder and goes
on; the workflow records only what only it knows, sending the attempts' events again (same
ids) ahead of that. Real dev server, real SQLite and PostgreSQL (the `sessions` fixture)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowHandle

from activities import recording
from activities.recording import AttemptRecorder, RecordingActivities
from pipeline_service.db.migrate import upgrade
from pipeline_service.db.models import OutboxEvent, Run, StepRun
from pipeline_service.db.recording import record_run_events
from pipeline_service.db.runs import insert_run
from pipeline_service.db.session import make_engine, session_factory, transaction
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
from schemas.run import StepStatus
from tests.integration.records import add_run, new_run, tenant_with_pipeline
from tests.integration.scripted import Behavior, ScriptedExecutor, pipeline, run_input, worker_for
from workflows.pipeline_run import PipelineRunWorkflow

NEVER = 3600.0
"""A recorder interval no test waits for: a worker that dies before writing anything."""


def _new_run(sessions: sessionmaker[Session]) -> str:
    with transaction(sessions) as session:
        tenant, pipe, version = tenant_with_pipeline(session)
        run, _ = insert_run(session, new_run(tenant, pipe, version, uuid.uuid4().hex))
        return run.workflow_id


def _record(
    sessions: sessionmaker[Session], workflow_id: str
) -> tuple[Run, list[StepRun], list[OutboxEvent]]:
    with sessions() as session:
        # One snapshot for the three reads (PostgreSQL's default gives each statement its own:
        # a run read just before the recorder's commit beside step rows read just after).
        session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        run = session.scalars(select(Run).where(Run.workflow_id == workflow_id)).one()
        steps = list(
            session.scalars(
                select(StepRun)
                .where(StepRun.run_id == run.id)
                .order_by(StepRun.step_id, StepRun.attempt)
            )
        )
        events = list(
            session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.key == run.public_id)
                .order_by(OutboxEvent.seq)
            )
        )
        session.expunge_all()
        return run, steps, events


def _trail(events: list[OutboxEvent]) -> list[tuple[str, str | None, int | None]]:
    """(type, step, attempt) of each outbox event, in outbox order."""
    return [(e.type, e.payload.get("step_id"), e.payload.get("attempt")) for e in events]


async def _local_activity_markers(handle: WorkflowHandle[object, object]) -> int:
    history = await handle.fetch_history()
    return sum(
        1
        for e in history.events
        if e.event_type == HistoryEventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    )


async def _start(
    client: Client, queue: str, workflow_id: str, steps: list[dict[str, object]]
) -> WorkflowHandle[PipelineRunWorkflow, object]:
    return await client.start_workflow(
        PipelineRunWorkflow.run,
        run_input(pipeline(steps), workflow_id, record=True),
        id=workflow_id,
        task_queue=queue,
    )


async def test_attempts_are_recorded_in_the_background_while_the_run_goes_on(
    client: Client, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    workflow_id = _new_run(sessions)
    executor = ScriptedExecutor(behaviors={"b": Behavior(sleep=1.5)})
    attempts = AttemptRecorder(sessions)
    queue = f"q-{uuid.uuid4()}"
    steps: list[dict[str, object]] = [
        {"id": "a"},
        {"id": "b", "depends_on": ["a"]},
        {"id": "c", "depends_on": ["b"]},
    ]
    async with worker_for(client, executor, tmp_path, queue, sessions, attempts):
        handle = await _start(client, queue, workflow_id, steps)
        # While b runs, the database shows the run started, a done and b running: written by
        # the background recorder, since the workflow has recorded nothing yet.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            run, rows, _ = _record(sessions, workflow_id)
            seen = {(r.step_id, r.status) for r in rows}
            if {("a", "SUCCEEDED"), ("b", "RUNNING")} <= seen:
                break
            assert asyncio.get_running_loop().time() < deadline, (run.status, seen)
            await asyncio.sleep(0.05)
        assert run.status == "RUNNING" and run.started_at is not None
        assert await _local_activity_markers(handle) == 0  # no recording on the step path
        await handle.result()
        await attempts.flush()
        # The run's end was the only recording the workflow made.
        assert await _local_activity_markers(handle) == 1
    run, rows, events = _record(sessions, workflow_id)
    assert run.status == "SUCCEEDED"
    assert [(r.step_id, r.attempt, r.status) for r in rows] == [
        ("a", 1, "SUCCEEDED"), ("b", 1, "SUCCEEDED"), ("c", 1, "SUCCEEDED")
    ]  # fmt: skip
    assert all(r.started_at and r.finished_at and r.outputs == {"attempt": 1} for r in rows)
    assert _trail(events) == [
        ("PIPELINE_STARTED", None, None),
        ("PIPELINE_STEP_STARTED", "a", 1), ("PIPELINE_STEP_COMPLETED", "a", 1),
        ("PIPELINE_STEP_STARTED", "b", 1), ("PIPELINE_STEP_COMPLETED", "b", 1),
        ("PIPELINE_STEP_STARTED", "c", 1), ("PIPELINE_STEP_COMPLETED", "c", 1),
        ("PIPELINE_SUCCEEDED", None, None),
    ]  # fmt: skip
    assert attempts.written >= 4  # the run's start, a's two events and b's start at least


async def test_a_worker_that_never_wrote_its_attempts_still_leaves_a_complete_record(
    client: Client, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The worker's recorder holds every attempt event unwritten (as a worker killed before its
    next write would): the workflow's recording of the run's end writes them all, in order; the
    recorder's late write then adds nothing."""
    workflow_id = _new_run(sessions)
    executor = ScriptedExecutor(behaviors={"b": Behavior(fail_times=1)})
    attempts = AttemptRecorder(sessions, interval=NEVER)
    queue = f"q-{uuid.uuid4()}"
    steps: list[dict[str, object]] = [
        {"id": "a"},
        {"id": "b", "retry": {"initial_interval": 0.1}},
        {"id": "c", "depends_on": ["a", "b"]},
    ]
    async with worker_for(client, executor, tmp_path, queue, sessions, attempts):
        handle = await _start(client, queue, workflow_id, steps)
        await handle.result()
    assert attempts.written == 0 and attempts.pending > 0
    run, rows, events = _record(sessions, workflow_id)
    assert run.status == "SUCCEEDED" and run.started_at is not None
    assert [(r.step_id, r.attempt, r.status) for r in rows] == [
        ("a", 1, "SUCCEEDED"), ("b", 1, "FAILED"), ("b", 2, "SUCCEEDED"), ("c", 1, "SUCCEEDED")
    ]  # fmt: skip
    assert rows[1].error == "scripted failure 1" and rows[2].outputs == {"attempt": 2}
    trail = _trail(events)
    assert trail[0] == ("PIPELINE_STARTED", None, None)
    assert trail[-1] == ("PIPELINE_SUCCEEDED", None, None)
    assert len(trail) == len(set(trail)), trail  # each transition once
    for step, attempt in (("a", 1), ("b", 1), ("b", 2), ("c", 1)):
        started = trail.index(("PIPELINE_STEP_STARTED", step, attempt))
        ended = next(i for i, t in enumerate(trail) if t[1:] == (step, attempt) and i > started)
        assert trail[ended][0] in ("PIPELINE_STEP_COMPLETED", "PIPELINE_STEP_FAILED")
    assert trail.index(("PIPELINE_STEP_RETRYING", "b", 2)) < trail.index(
        ("PIPELINE_STEP_STARTED", "b", 2)
    )
    # Both of c's upstream steps ended before c started.
    c_started = trail.index(("PIPELINE_STEP_STARTED", "c", 1))
    assert trail.index(("PIPELINE_STEP_COMPLETED", "a", 1)) < c_started
    assert trail.index(("PIPELINE_STEP_COMPLETED", "b", 2)) < c_started
    # The dead worker's events, written after all: every one is there already.
    await attempts.flush()
    assert attempts.written == 0 and attempts.pending == 0
    assert _trail(_record(sessions, workflow_id)[2]) == trail


async def test_the_background_and_the_backstop_racing_write_each_event_once(
    sessions: sessionmaker[Session],
) -> None:
    """The same attempt events written by the worker's recorder and the workflow's recording
    at once, ten times over: one outbox row per event, the rows as the events say."""
    with transaction(sessions) as session:
        run = add_run(session)
        workflow_id = run.workflow_id
    temporal_run = str(uuid.uuid4())
    at = datetime.now(UTC)
    events = [run_started_event(temporal_run, at)]
    for step in ("a", "b"):
        events.append(attempt_started_event(temporal_run, step, "noop", 1, at))
        events.append(attempt_ended_event(temporal_run, step, "noop", 1, at, started_at=at,
                                          error="boom", error_type="StepError"))  # fmt: skip
    attempts = AttemptRecorder(sessions)
    recording = RecordingActivities(sessions)
    batch = RecordRunEventsInput(workflow_id=workflow_id, events=events)
    results = await asyncio.gather(
        *(asyncio.to_thread(attempts._write, [batch]) for _ in range(5)),
        *(asyncio.to_thread(recording._write, [batch]) for _ in range(5)),
    )
    assert sum(r[0].recorded for r in results) == len(events)
    _, rows, outbox = _record(sessions, workflow_id)
    assert len(outbox) == len(events)
    assert [(r.step_id, r.status, r.error) for r in rows] == [
        ("a", "FAILED", "boom"), ("b", "FAILED", "boom")
    ]  # fmt: skip


def test_an_attempts_late_event_changes_nothing_the_workflow_decided(
    sessions: sessionmaker[Session],
) -> None:
    """The workflow cancelled an attempt (fail_fast) and ended the run; the attempt's own end
    (the step raised as it was stopped) arrives afterwards: ignored, rows and outbox unchanged.
    The run's start implied by a second attempt is recorded once."""
    with transaction(sessions) as session:
        run = add_run(session)
        workflow_id = run.workflow_id
    temporal_run = str(uuid.uuid4())
    at = datetime.now(UTC)

    def own(**change: object) -> RunEvent:
        return RunEvent(event_id=str(uuid.uuid4()), at=at, **change)  # type: ignore[arg-type]

    with transaction(sessions) as session:
        first = record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            run_started_event(temporal_run, at),
            attempt_started_event(temporal_run, "a", "noop", 1, at),
        ]))  # fmt: skip
        again = record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            run_started_event(temporal_run, at),  # the same id: skipped
            own(run=RunTransition(status=RecordedRunStatus.RETRYING, at=at)),
            RunEvent(event_id=str(uuid.uuid4()), at=at,  # another id, still a run start
                     run=RunTransition(status=RecordedRunStatus.RUNNING, at=at),
                     from_attempt=True),
        ]))  # fmt: skip
        cancelled = record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[  # noqa: E501
            own(step=StepTransition(step_id="a", type="noop", attempt=1,
                                    status=StepStatus.CANCELLED, error="cancelled")),
        ]))  # fmt: skip
        late = record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            attempt_ended_event(temporal_run, "a", "noop", 1, at, error="stopped",
                                error_type="StepError"),
        ]))  # fmt: skip
        ended = record_run_events(session, RecordRunEventsInput(workflow_id=workflow_id, events=[
            own(run=RunTransition(status=RecordedRunStatus.FAILED, at=at, error="x")),
            attempt_started_event(temporal_run, "b", "noop", 1, at),  # after the end: ignored
        ]))  # fmt: skip
    assert (first.recorded, again.recorded, cancelled.recorded) == (2, 1, 1)
    assert (late.recorded, late.skipped) == (0, 1)
    assert (ended.recorded, ended.skipped) == (1, 1)
    run_row, rows, outbox = _record(sessions, workflow_id)
    assert run_row.status == "FAILED"
    assert [(r.step_id, r.status, r.error) for r in rows] == [("a", "CANCELLED", "cancelled")]
    assert [e.type for e in outbox] == [
        "PIPELINE_STARTED", "PIPELINE_STEP_STARTED", "PIPELINE_STARTED",
        "PIPELINE_STEP_CANCELLED", "PIPELINE_FAILED",
    ]  # fmt: skip


async def test_flush_at_stop_writes_what_the_background_writer_has_not(
    sessions: sessionmaker[Session],
) -> None:
    """A worker stopping: its recorder holds events its background writer has not written yet
    (the writer waits out its interval); `flush` writes them now, and cancels that writer."""
    with transaction(sessions) as session:
        workflow_id = add_run(session).workflow_id
    temporal_run, at = str(uuid.uuid4()), datetime.now(UTC)
    attempts = AttemptRecorder(sessions, interval=NEVER)
    started = [run_started_event(temporal_run, at),
               attempt_started_event(temporal_run, "a", "noop", 1, at)]  # fmt: skip
    attempts.submit(workflow_id, started)
    attempts.submit(workflow_id, [attempt_ended_event(temporal_run, "a", "noop", 1, at,
                                                      started_at=at, error="boom")])  # fmt: skip
    assert attempts.pending == 3
    assert await attempts.flush() == 0
    assert attempts.pending == 0 and attempts.written == 3
    run, rows, events = _record(sessions, workflow_id)
    assert run.status == "RUNNING"
    assert [(r.step_id, r.attempt, r.status, r.error) for r in rows] == [("a", 1, "FAILED", "boom")]
    assert _trail(events) == [
        ("PIPELINE_STARTED", None, None),
        ("PIPELINE_STEP_STARTED", "a", 1),
        ("PIPELINE_STEP_FAILED", "a", 1),
    ]
    assert await attempts.flush() == 0  # nothing left: nothing written twice
    assert len(_record(sessions, workflow_id)[2]) == 3


async def test_flush_at_stop_gives_up_on_a_database_that_does_not_answer() -> None:
    """The database's address accepts connections and never answers (a host gone behind a
    firewall, a frozen server): the flush gives up after its timeout, with the events left
    unwritten, instead of holding the worker's stop; its write stays behind in a daemon
    thread that the interpreter's exit does not wait for."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/none")
    try:
        attempts = AttemptRecorder(session_factory(engine), interval=NEVER)
        at = datetime.now(UTC)
        attempts.submit("acme/p/x", [run_started_event(str(uuid.uuid4()), at)])
        started = time.monotonic()
        left = await attempts.flush(timeout=1.0)
        waited = time.monotonic() - started
        assert left == 1 and attempts.pending == 1 and attempts.written == 0
        assert 1.0 <= waited < 3.0, waited
        stuck = [t for t in threading.enumerate() if t.name == "attempt-recorder-flush"]
        assert stuck and all(t.daemon for t in stuck)
    finally:
        silent.close()
        engine.dispose()


async def test_a_database_away_costs_one_traceback_then_a_line_now_and_then(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the database is away the recorder retries every 10 intervals: the first failure
    is logged with its traceback, later ones as one line per FAILURE_LOG_EVERY (not a
    traceback per retry), and the first write that succeeds again says so."""
    monkeypatch.setattr(recording, "FAILURE_LOG_EVERY", 0.3)
    place = tmp_path / "not-yet"  # SQLite cannot open a file in a directory that is missing
    engine = make_engine(f"sqlite:///{place / 'laminar.db'}")
    attempts = AttemptRecorder(session_factory(engine), interval=0.01)  # retries every 0.1 s
    caplog.set_level(logging.INFO, logger=recording.__name__)
    try:
        attempts.submit("acme/p/x", [run_started_event(str(uuid.uuid4()), datetime.now(UTC))])
        await asyncio.sleep(1.0)  # about ten failed writes
        lines = [r for r in caplog.records if "attempt recorder" in r.getMessage()]
        first, *later = lines
        assert first.getMessage().startswith("attempt recorder: write failed; retrying")
        assert first.exc_info is not None
        assert 1 <= len(later) <= 4, [r.getMessage() for r in lines]
        assert all("still failing" in r.getMessage() and not r.exc_info for r in later)
        place.mkdir()  # the database is back (migrated)
        upgrade(engine)
        deadline = time.monotonic() + 5
        while attempts.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert attempts.pending == 0
        assert "writing again after" in caplog.records[-1].getMessage()
    finally:
        engine.dispose()
