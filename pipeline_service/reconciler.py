"""Reconciliation: runs whose workflow ended outside the workflow's own code.

A workflow records its own end (`record_run_event`). One that the server ends instead — the
execution timeout, a terminate from the Temporal UI/CLI, a cancel it never got to record —
leaves its row RUNNING. The reconciler looks only at runs that have been QUEUED/RUNNING/
RETRYING for longer than a threshold, asks Temporal about them in batches (one visibility
query per batch for the closed ones, then one describe of each hit: a reset leaves a closed
run behind but the workflow goes on), and records the end it finds through
`record_run_events`, with its outbox rows, like every other change.

Idempotent with the workflow's own recording and with other reconcilers: event ids are uuid5
of the Temporal run, a run already finished in the database is left alone, and
`record_run_events` ignores a run transition once the run has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.orm import Session, sessionmaker
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHistoryEventFilterType,
)
from temporalio.service import RPCError, RPCStatusCode

from pipeline_service.db.models import Run, StepRun
from pipeline_service.db.recording import record_run_events
from pipeline_service.db.session import transaction
from schemas.recording import (
    RecordedRunStatus,
    RecordRunEventsInput,
    RunEvent,
    RunTransition,
    StepTransition,
)
from schemas.run import STEP_ACTIVE, StepStatus

log = logging.getLogger(__name__)

UNFINISHED = (
    RecordedRunStatus.QUEUED.value,
    RecordedRunStatus.RUNNING.value,
    RecordedRunStatus.RETRYING.value,
)
RECONCILE_LOCK_KEY = 0x4C414D5245434F4E  # "LAMRECON": one reconciler round at a time
_EVENT_IDS = uuid.UUID("6f1c7a52-3c57-4b8e-9a57-7d1b0f3e2c11")


@dataclass(frozen=True)
class Ended:
    """How Temporal says a workflow ended."""

    workflow_id: str
    temporal_run_id: str
    status: RecordedRunStatus
    error: str | None
    at: datetime


def stale_runs(
    session: Session, older_than: datetime, after_id: int, limit: int
) -> list[tuple[int, str]]:
    """(id, workflow id) of unfinished runs created before `older_than`, in id order."""
    rows = session.execute(
        select(Run.id, Run.workflow_id)
        .where(Run.status.in_(UNFINISHED), Run.created_at < older_than, Run.id > after_id)
        .order_by(Run.id)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in rows]


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def _closed_ids(client: Client, workflow_ids: list[str]) -> set[str]:
    """The ids among `workflow_ids` that have a closed execution (one visibility query)."""
    query = (
        f"WorkflowId IN ({', '.join(_quoted(w) for w in workflow_ids)}) "
        "AND ExecutionStatus != 'Running'"
    )
    try:
        return {execution.id async for execution in client.list_workflows(query)}
    except RPCError as exc:
        if exc.status != RPCStatusCode.INVALID_ARGUMENT:
            raise
        # A visibility store without IN: every id is a candidate for a describe.
        log.info("visibility query refused (%s); describing each run", exc.message)
        return set(workflow_ids)


async def _ended(client: Client, workflow_id: str) -> Ended | None:
    """The latest execution's end, or None while it runs (or when Temporal has no such id)."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        described = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None  # never started (the launcher retries it) or already deleted
        raise
    status = described.status
    if status is None or status in (
        WorkflowExecutionStatus.RUNNING,
        WorkflowExecutionStatus.CONTINUED_AS_NEW,
    ):
        return None
    at = described.close_time or datetime.now(UTC)
    recorded, error = RecordedRunStatus.FAILED, None
    if status == WorkflowExecutionStatus.COMPLETED:
        recorded = RecordedRunStatus.SUCCEEDED
    elif status == WorkflowExecutionStatus.CANCELED:
        recorded, error = RecordedRunStatus.CANCELLED, "cancelled"
    elif status == WorkflowExecutionStatus.TIMED_OUT:
        timeout = described.raw_description.execution_config.workflow_execution_timeout
        limit = f" after {timeout.ToTimedelta()}" if timeout.ToSeconds() else ""
        error = f"run timed out{limit} (the pipeline's timeout)"
    else:
        error = await _close_reason(client, workflow_id, described.run_id, status)
    return Ended(workflow_id, described.run_id, recorded, error, at)


async def _close_reason(
    client: Client, workflow_id: str, run_id: str, status: WorkflowExecutionStatus
) -> str:
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events(
        event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT
    ):
        if event.event_type == HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
            attrs = event.workflow_execution_terminated_event_attributes
            by = f" by {attrs.identity}" if attrs.identity else ""
            return f"terminated in Temporal{by}: {attrs.reason or 'no reason given'}"
        if event.event_type == HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            return event.workflow_execution_failed_event_attributes.failure.message or "failed"
    return f"workflow ended {status.name.lower()} in Temporal"


def _event_id(ended: Ended, what: str) -> str:
    return str(uuid.uuid5(_EVENT_IDS, f"{ended.workflow_id}\n{ended.temporal_run_id}\n{what}"))


def record_end(session: Session, run_id: int, ended: Ended) -> int:
    """Record `ended` for the run (and end its attempts still in flight), unless the run has
    finished in the database meanwhile. Returns the events written."""
    query = select(Run).where(Run.id == run_id)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    run = session.scalars(query).one_or_none()
    if run is None or run.status not in UNFINISHED:
        return 0
    latest: dict[str, StepRun] = {}
    for row in session.scalars(select(StepRun).where(StepRun.run_id == run.id)):
        if row.step_id not in latest or row.attempt > latest[row.step_id].attempt:
            latest[row.step_id] = row
    events = [
        RunEvent(
            event_id=_event_id(ended, f"step:{row.step_id}:{row.attempt}"),
            at=ended.at,
            step=StepTransition(
                step_id=row.step_id,
                type=row.type,
                attempt=row.attempt,
                status=StepStatus.CANCELLED,
                started_at=row.started_at,
                finished_at=ended.at,
                error=ended.error,
                rows_affected=row.rows_affected,
                outputs=row.outputs or {},
                tables=row.tables or {},
                log_path=row.log_path,
            ),
        )
        for row in sorted(latest.values(), key=lambda r: r.id)
        if row.status in {s.value for s in STEP_ACTIVE}
    ]
    events.append(
        RunEvent(
            event_id=_event_id(ended, "run"),
            at=ended.at,
            run=RunTransition(status=ended.status, at=ended.at, error=ended.error),
        )
    )
    result = record_run_events(
        session, RecordRunEventsInput(workflow_id=ended.workflow_id, events=events)
    )
    return result.recorded


class RunReconciler:
    """Brings runs that Temporal ended on its own into line; see the module docstring."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        client: Client,
        *,
        older_than: timedelta = timedelta(minutes=1),
        batch_size: int = 100,
        describe_concurrency: int = 8,
    ) -> None:
        self._sessions = sessions
        self._client = client
        self._older_than = older_than
        self._batch_size = batch_size
        self._describes = asyncio.Semaphore(describe_concurrency)

    async def reconcile_once(self) -> int:
        """One pass over the stale runs; returns the runs whose end was recorded now (0 when
        another process holds the round)."""
        lock = await asyncio.to_thread(self._lock)
        if lock is None:
            return 0
        try:
            return await self._pass()
        finally:
            await asyncio.to_thread(self._unlock, lock)

    async def _pass(self) -> int:
        cutoff = datetime.now(UTC) - self._older_than
        after, reconciled = 0, 0
        while True:
            batch = await asyncio.to_thread(self._stale, cutoff, after)
            if not batch:
                return reconciled
            after = batch[-1][0]
            closed = await _closed_ids(self._client, [workflow_id for _, workflow_id in batch])
            candidates = [(run_id, w) for run_id, w in batch if w in closed]
            ends = await asyncio.gather(*(self._describe(w) for _, w in candidates))
            for (run_id, _), ended in zip(candidates, ends, strict=True):
                if ended is not None and await asyncio.to_thread(self._record, run_id, ended) > 0:
                    reconciled += 1
                    log.info("run %s ended in Temporal: %s", ended.workflow_id, ended.error)
            if len(batch) < self._batch_size:
                return reconciled

    async def reconcile_workflow(self, workflow_id: str) -> bool:
        """Record this one run's end now, if Temporal has ended it and its row has not (no
        age threshold: `laminar run` calls this when its own run's workflow closes)."""
        ended = await _ended(self._client, workflow_id)
        if ended is None:
            return False

        def record() -> int:
            with transaction(self._sessions) as session:
                run_id = session.scalar(select(Run.id).where(Run.workflow_id == workflow_id))
                return 0 if run_id is None else record_end(session, run_id, ended)

        if await asyncio.to_thread(record) == 0:
            return False
        log.info("run %s ended in Temporal: %s", workflow_id, ended.error)
        return True

    async def run(self, stop: asyncio.Event, interval: timedelta) -> None:
        """Reconcile every `interval` until `stop`; a failed pass is logged and retried."""
        while not stop.is_set():
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconciling runs with Temporal failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval.total_seconds())

    def _stale(self, cutoff: datetime, after: int) -> list[tuple[int, str]]:
        with self._sessions() as session:
            return stale_runs(session, cutoff, after, self._batch_size)

    async def _describe(self, workflow_id: str) -> Ended | None:
        async with self._describes:
            return await _ended(self._client, workflow_id)

    def _record(self, run_id: int, ended: Ended) -> int:
        with transaction(self._sessions) as session:
            return record_end(session, run_id, ended)

    def _lock(self) -> Connection | None:
        """On PostgreSQL, the round's lock: one reconciler at a time across all processes
        (the lock goes with the connection if the process dies). None: another holds it."""
        engine = self._sessions.kw["bind"]
        assert isinstance(engine, Engine)
        connection = engine.connect()
        if engine.dialect.name != "postgresql":
            return connection  # SQLite: the embedded shape has one process
        locked = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": RECONCILE_LOCK_KEY}
        ).scalar()
        connection.commit()
        if locked:
            return connection
        connection.close()
        return None

    def _unlock(self, connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RECONCILE_LOCK_KEY})
            connection.commit()
        connection.close()
