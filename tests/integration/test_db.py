"""Persistence on real SQLite and PostgreSQL: the migrations, keys, run uniqueness and
`record_run_events` (idempotent on event ids). Every test runs on both databases."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from activities.recording import RecordingActivities
from pipeline_service.db import migrate
from pipeline_service.db.models import ApiKey, Base, OutboxEvent, Run, StepRun
from pipeline_service.db.recording import record_run_events
from pipeline_service.db.runs import get_run_by_workflow_id, insert_run
from pipeline_service.db.session import make_engine, transaction
from pipeline_service.db.tenants import Scope, create_api_key, create_tenant, resolve_api_key
from schemas.recording import (
    RecordedRunStatus,
    RecordRunEventsInput,
    RecordRunEventsResult,
    RunEvent,
    RunTransition,
    StepTransition,
)
from schemas.run import StepStatus
from tests.conftest import scratch_postgres_database
from tests.integration.records import add_run, new_run, tenant_with_pipeline

TABLES = {"tenants", "api_keys", "pipelines", "pipeline_versions", "runs", "step_runs", "outbox"}


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_engine(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield engine
        engine.dispose()
    else:
        with scratch_postgres_database() as url:
            engine = make_engine(url)
            yield engine
            engine.dispose()


def test_migrations_create_the_schema_and_match_the_models(fresh_engine: Engine) -> None:
    assert migrate.current_revision(fresh_engine) is None
    migrate.upgrade(fresh_engine)
    assert migrate.current_revision(fresh_engine) == migrate.head_revision()
    assert set(inspect(fresh_engine).get_table_names()) >= TABLES
    with fresh_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    # Down and up again: the migrations are reversible.
    migrate.upgrade(fresh_engine, "head")
    from alembic import command

    config = migrate.alembic_config()
    with fresh_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert not TABLES & set(inspect(fresh_engine).get_table_names())
    migrate.upgrade(fresh_engine)
    assert set(inspect(fresh_engine).get_table_names()) >= TABLES


def test_api_keys_are_stored_hashed_and_resolve_until_revoked(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        tenant = create_tenant(session, f"t-{uuid.uuid4().hex[:8]}", actor="admin")
        key, clear = create_api_key(session, tenant, "ci", Scope.OPERATE, actor="admin")
        key_id = key.id
    with transaction(sessions) as session:
        stored = session.get(ApiKey, key_id)
        assert stored is not None
        assert clear not in (stored.key_hash, stored.prefix) and clear.startswith(stored.prefix)
        resolved = resolve_api_key(session, clear)
        assert resolved is not None and resolved.tenant.name == tenant.name
        assert resolve_api_key(session, clear + "x") is None
        stored.revoked_at = datetime.now(UTC)
    with transaction(sessions) as session:
        assert resolve_api_key(session, clear) is None


def test_one_workflow_id_is_one_run_even_when_inserts_race(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        tenant, pipeline, version = tenant_with_pipeline(session)
    request = new_run(tenant, pipeline, version, "same-key")
    barrier = threading.Barrier(10)
    public_ids: list[str] = []
    errors: list[BaseException] = []

    def insert() -> None:
        try:
            barrier.wait()
            with transaction(sessions) as session:
                run, _ = insert_run(session, request)
                public_ids.append(run.public_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=insert) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(public_ids)) == 1 and len(public_ids) == 10
    with sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(Run).where(Run.workflow_id == request.workflow_id)
        )
    assert count == 1


def _batch(workflow_id: str, at: datetime) -> RecordRunEventsInput:
    def step(attempt: int, status: StepStatus, **extra: object) -> StepTransition:
        return StepTransition.model_validate(
            {"step_id": "a", "type": "noop", "attempt": attempt, "status": status, **extra}
        )

    later = at + timedelta(seconds=2)
    events = [
        RunEvent(event_id=str(uuid.uuid4()), at=at,
                 run=RunTransition(status=RecordedRunStatus.RUNNING, at=at)),
        RunEvent(event_id=str(uuid.uuid4()), at=at,
                 step=step(1, StepStatus.RUNNING, started_at=at)),
        RunEvent(event_id=str(uuid.uuid4()), at=at,
                 step=step(1, StepStatus.FAILED, started_at=at, finished_at=at, error="boom",
                           error_type="StepError")),
        RunEvent(event_id=str(uuid.uuid4()), at=at,
                 step=step(2, StepStatus.RETRYING)),
        RunEvent(event_id=str(uuid.uuid4()), at=later,
                 step=step(2, StepStatus.SUCCEEDED, started_at=at, finished_at=later,
                           rows_affected=3)),
        RunEvent(event_id=str(uuid.uuid4()), at=later,
                 run=RunTransition(status=RecordedRunStatus.SUCCEEDED, at=later)),
    ]  # fmt: skip
    return RecordRunEventsInput(workflow_id=workflow_id, events=events)


def test_record_run_events_writes_rows_and_outbox_once(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        run = add_run(session)
        workflow_id, run_pk = run.workflow_id, run.id
    at = datetime(2026, 2, 1, 12, tzinfo=UTC)
    batch = _batch(workflow_id, at)
    with transaction(sessions) as session:
        result = record_run_events(session, batch)
    assert (result.recorded, result.skipped) == (6, 0)
    # The same batch again (a retried or replayed local activity) writes nothing.
    with transaction(sessions) as session:
        again = record_run_events(session, batch)
    assert (again.recorded, again.skipped) == (0, 6)

    with sessions() as session:
        run = get_run_by_workflow_id(session, workflow_id)
        assert run is not None
        assert run.status == "SUCCEEDED"
        assert run.started_at == at and run.finished_at == at + timedelta(seconds=2)
        attempts = session.scalars(
            select(StepRun).where(StepRun.run_id == run_pk).order_by(StepRun.attempt)
        ).all()
        assert [(a.attempt, a.status, a.error) for a in attempts] == [
            (1, "FAILED", "boom"),
            (2, "SUCCEEDED", None),
        ]
        assert attempts[1].rows_affected == 3
        outbox = session.scalars(
            select(OutboxEvent).where(OutboxEvent.key == run.public_id).order_by(OutboxEvent.seq)
        ).all()
        assert [e.type for e in outbox] == [
            "PIPELINE_STARTED",
            "PIPELINE_STEP_STARTED",
            "PIPELINE_STEP_FAILED",
            "PIPELINE_STEP_RETRYING",
            "PIPELINE_STEP_COMPLETED",
            "PIPELINE_SUCCEEDED",
        ]
        assert [e.event_id for e in outbox] == [e.event_id for e in batch.events]
        assert outbox[-1].payload["duration_ms"] == 2000
        assert outbox[2].payload["attempt"] == 1 and outbox[2].actor == "test-key"


def test_the_recording_activity_writes_a_recorded_batch_again_as_nothing(
    sessions: sessionmaker[Session],
) -> None:
    """The activity skips the read of recorded ids (one round trip fewer); a batch that was
    recorded already makes the insert fail, and the whole group is written again with it."""
    with transaction(sessions) as session:
        first, second = add_run(session).workflow_id, add_run(session).workflow_id
    at = datetime(2026, 2, 1, 12, tzinfo=UTC)
    recorded, fresh = _batch(first, at), _batch(second, at)
    recording = RecordingActivities(sessions)
    assert [r.recorded for r in recording._write([recorded])] == [6]
    results = recording._write([fresh, recorded])  # one group, as group commit writes them
    assert [(r.recorded, r.skipped) for r in results] == [(6, 0), (0, 6)]
    with sessions() as session:
        ids = [e.event_id for e in recorded.events + fresh.events]
        count = session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.event_id.in_(ids))
        )
        assert count == 12


def test_a_finished_run_keeps_its_first_end(sessions: sessionmaker[Session]) -> None:
    """Once a run's end is recorded (e.g. by the reconciler), a later run transition of a
    batch still in flight changes nothing and adds no event."""
    with transaction(sessions) as session:
        workflow_id = add_run(session).workflow_id
    at = datetime(2026, 2, 1, 12, tzinfo=UTC)
    batch = _batch(workflow_id, at)
    ended = RecordRunEventsInput(
        workflow_id=workflow_id,
        events=[
            RunEvent(event_id=str(uuid.uuid4()), at=at,
                     run=RunTransition(status=RecordedRunStatus.FAILED, at=at, error="killed"))
        ],
    )  # fmt: skip
    with transaction(sessions) as session:
        record_run_events(session, ended)
        late = record_run_events(session, batch)
    assert (late.recorded, late.skipped) == (4, 2)  # the step events; not the run's two
    with sessions() as session:
        run = get_run_by_workflow_id(session, workflow_id)
        assert run is not None and (run.status, run.error) == ("FAILED", "killed")


def test_a_failed_transaction_records_nothing(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        workflow_id = add_run(session).workflow_id
    batch = _batch(workflow_id, datetime(2026, 2, 1, tzinfo=UTC))
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        record_run_events(session, batch)
        raise RuntimeError("crash before commit")
    with sessions() as session:
        ids = [e.event_id for e in batch.events]
        assert session.scalars(select(OutboxEvent).where(OutboxEvent.event_id.in_(ids))).all() == []
        run = get_run_by_workflow_id(session, workflow_id)
        assert run is not None and run.status == "QUEUED"


def test_events_of_an_unknown_workflow_are_dropped(sessions: sessionmaker[Session]) -> None:
    batch = _batch(f"nobody/{uuid.uuid4()}", datetime(2026, 2, 1, tzinfo=UTC))
    with transaction(sessions) as session:
        result = record_run_events(session, batch)
    assert (result.recorded, result.skipped) == (0, 6)


async def test_a_batch_written_alone_after_its_group_failed_still_follows_up(
    sessions: sessionmaker[Session],
) -> None:
    """When a group write fails, its batches are written one by one; a finished run among them
    still gets what follows its end (the downstream notice), as in a group write."""
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("the failing write: PostgreSQL refuses a value too long for its column")
    with transaction(sessions) as session:
        good, bad = add_run(session).workflow_id, add_run(session).workflow_id
    at = datetime(2026, 2, 1, 12, tzinfo=UTC)
    too_long = StepTransition(
        step_id="a",
        type="noop",
        attempt=1,
        status=StepStatus.FAILED,
        started_at=at,
        finished_at=at,
        error="boom",
        error_type="E" * 300,  # the column holds 200
    )
    broken = RecordRunEventsInput(
        workflow_id=bad, events=[RunEvent(event_id=str(uuid.uuid4()), at=at, step=too_long)]
    )
    followed: list[str] = []

    async def after_run_finished(batch: RecordRunEventsInput) -> None:
        followed.append(batch.workflow_id)

    recording = RecordingActivities(sessions, after_run_finished=after_run_finished)
    outcomes = await asyncio.gather(
        recording.record_run_event(broken),
        recording.record_run_event(_batch(good, at)),  # queued behind it: one group
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], Exception), outcomes
    assert isinstance(outcomes[1], RecordRunEventsResult) and outcomes[1].recorded == 6
    await asyncio.sleep(0)  # the follow-up runs as a task
    assert followed == [good]


def test_database_errors_do_not_show_the_statements_values(tmp_path: Path) -> None:
    """A failed statement's error (which reaches logs) names its SQL, not the values bound
    to it: they can be a run's params, a sealed secret or a key's hash."""
    engine = make_engine(f"sqlite:///{tmp_path / 'laminar.db'}")
    try:
        with pytest.raises(OperationalError) as raised, engine.connect() as connection:
            connection.execute(text("SELECT * FROM missing WHERE x = :x"), {"x": "s3cr3t-value"})
        assert "missing" in str(raised.value) and "s3cr3t-value" not in str(raised.value)
    finally:
        engine.dispose()
