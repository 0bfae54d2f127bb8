"""Recording run state in the service database: the `record_run_event` activity and the
worker's background recorder of step attempts.

`record_run_event` runs as a local activity (no server round trip) whenever the workflow has
something only it knows to record (the run's end, a skip, a retry, a cancel, compensation),
with every transition since its last recording batched; idempotent on the event ids.

`AttemptRecorder`: `run_step` hands it each attempt's start and end and goes on; it writes
them in the background, many runs' events per transaction, so the step never waits for the
database. Their ids are deterministic (`attempt_event_id`), and the workflow sends the same
events again ahead of its own next recording, so a worker that dies with events unwritten
loses nothing, and the run's record is complete when its end is recorded.

Group commit: the batches of all runs that arrive while a write is in progress are written
together in the next transaction. With many runs at once this turns hundreds of small
transactions (which SQLite can only take one at a time) into a few larger ones; with one run
it is one transaction per batch, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from activities.names import RECORD_RUN_EVENT
from pipeline_service.db.recording import record_many
from pipeline_service.db.session import transaction
from pipeline_service.metrics import StepMetrics
from schemas.recording import (
    RUN_FINISHED,
    RecordRunEventsInput,
    RecordRunEventsResult,
    RunEvent,
    StepTransition,
)
from schemas.run import StepStatus

log = logging.getLogger(__name__)

_FINISHED_STEP = {StepStatus.SUCCEEDED, StepStatus.FAILED}
_Pending = tuple[RecordRunEventsInput, "asyncio.Future[RecordRunEventsResult]"]


def _observe_step(metrics: StepMetrics, step: StepTransition) -> None:
    if step.status in _FINISHED_STEP and step.started_at and step.finished_at:
        seconds = (step.finished_at - step.started_at).total_seconds()
        metrics.duration.labels(step.type, step.status.value).observe(seconds)


class RecordingActivities:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        metrics: StepMetrics | None = None,
        after_run_finished: Callable[[RecordRunEventsInput], Coroutine[Any, Any, None]]
        | None = None,
        attempts: AttemptRecorder | None = None,
    ) -> None:
        """`after_run_finished`: called (in the background, off the run's path) with each
        recorded batch that finishes a run; e.g. to release the downstream runs it gates."""
        self._sessions = sessions
        self._metrics = metrics
        self._after_run_finished = after_run_finished
        self._attempts = attempts
        self._background: set[asyncio.Task[None]] = set()
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    @activity.defn(name=RECORD_RUN_EVENT)
    async def record_run_event(self, input: RecordRunEventsInput) -> RecordRunEventsResult:
        known = 0
        if self._attempts is not None:
            # The attempts' events this worker's recorder has committed already: no need to
            # send them to the database again (usually all of them, on a worker that lives).
            events = [e for e in input.events if not self._attempts.committed(e)]
            known = len(input.events) - len(events)
            if known:
                input = input.model_copy(update={"events": events})
        future: asyncio.Future[RecordRunEventsResult] = asyncio.get_running_loop().create_future()
        self._pending.append((input, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        result = await future
        return result.model_copy(update={"skipped": result.skipped + known}) if known else result

    async def _write_pending(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            try:
                # The database driver blocks: keep it off the worker's event loop. One write at
                # a time with the worker's attempt recorder: the two would often write the same
                # attempt events at once, and one of them would have to do it all again.
                async with self._attempts.lock if self._attempts else contextlib.nullcontext():
                    results = await asyncio.to_thread(self._write, [b for b, _ in group])
            except Exception:
                # One bad batch must not fail the others: write them one by one.
                for batch, future in group:
                    try:
                        result = (await asyncio.to_thread(self._write, [batch]))[0]
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        self._settle(batch, future, result)
                continue
            for (batch, future), result in zip(group, results, strict=True):
                self._settle(batch, future, result)

    def _settle(
        self,
        batch: RecordRunEventsInput,
        future: asyncio.Future[RecordRunEventsResult],
        result: RecordRunEventsResult,
    ) -> None:
        """A batch written: its answer, its metrics, and what follows a finished run (also
        when it was written on its own, after its group's write failed)."""
        if not future.done():  # the activity may have been cancelled (timed out)
            future.set_result(result)
        if self._metrics is not None and result.recorded:
            self._observe(batch)
        if self._after_run_finished is not None and result.recorded:
            self._notify(batch)

    def _notify(self, batch: RecordRunEventsInput) -> None:
        assert self._after_run_finished is not None
        if any(e.run is not None and e.run.status in RUN_FINISHED for e in batch.events):
            task = asyncio.create_task(self._after_run_finished(batch))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _observe(self, batch: RecordRunEventsInput) -> None:
        assert self._metrics is not None
        tenant = batch.workflow_id.split("/", 1)[0]
        for event in batch.events:
            step, run = event.step, event.run
            if step is not None and not event.from_attempt:  # those: the AttemptRecorder's
                _observe_step(self._metrics, step)
            if run is not None and run.status in RUN_FINISHED:
                self._metrics.finished_runs.labels(tenant, run.status.value).inc()

    def _write(self, batches: list[RecordRunEventsInput]) -> list[RecordRunEventsResult]:
        # Attempt events come back from the workflow as its backstop and are mostly recorded
        # already (by the background recorder): read which.
        if any(e.from_attempt for b in batches for e in b.events):
            return write_checked(self._sessions, batches)
        try:
            # Optimistic: almost every other batch is new, so skip the read of recorded ids
            # (one database round trip on the workflow's critical path)...
            with transaction(self._sessions) as session:
                return record_many(session, batches, assume_new=True)
        except IntegrityError:
            # ...and when an id was recorded already (a retried or replayed batch), the
            # transaction rolled back whole: write again, skipping what is there.
            with transaction(self._sessions) as session:
                return record_many(session, batches)


FLUSH_INTERVAL = 0.05
"""Seconds the background recorder collects attempt events before writing them together."""
MAX_COMMITTED = 50_000
"""Ids of written events remembered, so the workflow's backstop need not send them again."""
FAILURE_LOG_EVERY = 30.0
"""Seconds between the recorder's lines about writes failing while the database is away."""
STOP_FLUSH_TIMEOUT = 5.0
"""Seconds a stopping worker spends at most writing its queued attempt events."""
MAX_PENDING = 100_000
"""Attempt events kept while the database does not answer; beyond, the oldest are dropped
(the workflows record them again with their next recording)."""


class AttemptRecorder:
    """Writes step attempts' own transitions in the background, batched across runs.

    `submit` only queues (no I/O, never raises): `run_step` calls it at an attempt's start and
    end. A writer task on the worker's event loop wakes `interval` seconds after the first
    queued event and writes everything queued in one transaction (in a thread: the driver
    blocks). Per run, events are written in the order they were submitted. A failed write is
    retried at the next wake-up; the workflow's own next recording carries the same events
    (same ids), so nothing depends on this path alone."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        metrics: StepMetrics | None = None,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._interval = interval
        self._pending: list[tuple[str, RunEvent]] = []
        self._writer: asyncio.Task[None] | None = None
        self.written = 0
        """Events written by this recorder (not counting ids recorded already)."""
        self._committed: dict[str, None] = {}
        """Ids of the events this recorder knows to be in the database (the latest ones)."""
        self.lock = asyncio.Lock()
        """Held while this worker writes run state (this recorder or `record_run_event`)."""
        self._failures = 0
        """Background writes failed in a row (the database is away)."""
        self._failure_logged = 0.0

    def submit(self, workflow_id: str, events: list[RunEvent]) -> None:
        self._pending.extend((workflow_id, event) for event in events)
        if self._metrics is not None:  # the step ended on this worker, whoever records it
            for event in events:
                if event.step is not None:
                    _observe_step(self._metrics, event.step)
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            log.warning("attempt recorder: %d unwritten events dropped", dropped)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_soon())

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self, timeout: float = STOP_FLUSH_TIMEOUT) -> int:
        """Write what is queued now, trying again while writes fail, for at most `timeout`
        seconds: when the worker stops, after its last steps ended. Returns how many events
        are left unwritten (a database that does not answer); their workflows record them
        again with their next recording on another worker."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()  # its events go back to the queue, written here instead
            await asyncio.wait([self._writer])
        try:
            async with asyncio.timeout(timeout):
                while self._pending:
                    await self._write_pending(_in_daemon_thread)
        except TimeoutError:
            log.warning(
                "attempt recorder: %d events left unwritten after %.0f s (the database does "
                "not answer); the runs' workflows record them again",
                len(self._pending),
                timeout,
            )
        return len(self._pending)

    async def _write_soon(self) -> None:
        while self._pending:
            await asyncio.sleep(self._interval)
            await self._write_pending()

    async def _write_pending(self, in_thread: InThread = asyncio.to_thread) -> None:
        group, self._pending = self._pending, []
        batches: dict[str, list[RunEvent]] = {}
        for workflow_id, event in group:
            batches.setdefault(workflow_id, []).append(event)
        try:
            async with self.lock:
                results: list[RecordRunEventsResult] = await in_thread(
                    self._write,
                    [RecordRunEventsInput(workflow_id=w, events=e) for w, e in batches.items()],
                )
        except asyncio.CancelledError:
            # Cancelled by `flush` (or the loop closing): whether the thread's write commits
            # or not, writing these again records nothing twice.
            self._pending[:0] = group
            raise
        except Exception as exc:
            # The first failure with its traceback; while the database stays away, one line
            # per FAILURE_LOG_EVERY seconds, not a traceback per retry (every 0.5 s).
            now = time.monotonic()
            if not self._failures:
                log.warning(
                    "attempt recorder: write failed; retrying (%d events held)",
                    len(group),
                    exc_info=True,
                )
                self._failure_logged = now
            elif now - self._failure_logged >= FAILURE_LOG_EVERY:
                log.warning(
                    "attempt recorder: writes still failing (%d in a row, %d events held): %s",
                    self._failures + 1,
                    len(group),
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )
                self._failure_logged = now
            self._failures += 1
            self._pending[:0] = group  # keep the order: these came first
            await asyncio.sleep(self._interval * 10)
            return
        if self._failures:
            log.info("attempt recorder: writing again after %d failed writes", self._failures)
            self._failures = 0
        self.written += sum(r.recorded for r in results)
        self._committed.update((event.event_id, None) for _, event in group)
        while len(self._committed) > MAX_COMMITTED:
            del self._committed[next(iter(self._committed))]

    def committed(self, event: RunEvent) -> bool:
        """Whether this recorder has written `event` (or found it written) already."""
        return event.from_attempt and event.event_id in self._committed

    def _write(self, batches: list[RecordRunEventsInput]) -> list[RecordRunEventsResult]:
        return write_checked(self._sessions, batches)


_T = TypeVar("_T")
InThread = Callable[..., Coroutine[Any, Any, Any]]
"""Runs a blocking function in a thread: `asyncio.to_thread`, or `_in_daemon_thread`."""


async def _in_daemon_thread(function: Callable[..., _T], *args: Any) -> _T:
    """`asyncio.to_thread`, in a daemon thread of its own: the interpreter's exit joins the
    threads of `to_thread`'s pool (and anyio's), so a write hanging on a database that stopped
    answering would hang the process that gave up on it; this one is left behind."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():  # the caller gave up (cancelled)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: _T | None = None
        error: BaseException | None = None
        try:
            result = function(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="attempt-recorder-flush", daemon=True).start()
    return await future


WRITE_TRIES = 5


def write_checked(
    sessions: sessionmaker[Session], batches: list[RecordRunEventsInput]
) -> list[RecordRunEventsResult]:
    """Record batches reading which ids are recorded already. An attempt's event can be written
    by its worker and by the workflow's backstop at the same moment: the transaction that
    loses the race on the unique event id rolls back whole and reads again."""
    for tries_left in range(WRITE_TRIES - 1, -1, -1):
        try:
            with transaction(sessions) as session:
                return record_many(session, batches)
        except IntegrityError:
            log.info("recording: an event id was written meanwhile; writing again")
            if not tries_left:
                raise
    raise AssertionError("unreachable")
