"""The `record_run_event` activity: the workflow's transitions into the service database.

Run as a local activity (no server round trip), once per workflow task with that task's
transitions batched; idempotent on the event ids.

Group commit: the batches of all runs that arrive while a write is in progress are written
together in the next transaction. With many runs at once this turns hundreds of small
transactions (which SQLite can only take one at a time) into a few larger ones; with one run
it is one transaction per batch, as before.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from activities.names import RECORD_RUN_EVENT
from pipeline_service.db.recording import record_run_events
from pipeline_service.db.session import transaction
from pipeline_service.metrics import StepMetrics
from schemas.recording import RUN_FINISHED, RecordRunEventsInput, RecordRunEventsResult
from schemas.run import StepStatus

log = logging.getLogger(__name__)

_FINISHED_STEP = {StepStatus.SUCCEEDED, StepStatus.FAILED}
_Pending = tuple[RecordRunEventsInput, "asyncio.Future[RecordRunEventsResult]"]


class RecordingActivities:
    def __init__(self, sessions: sessionmaker[Session], metrics: StepMetrics | None = None) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    @activity.defn(name=RECORD_RUN_EVENT)
    async def record_run_event(self, input: RecordRunEventsInput) -> RecordRunEventsResult:
        future: asyncio.Future[RecordRunEventsResult] = asyncio.get_running_loop().create_future()
        self._pending.append((input, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        return await future

    async def _write_pending(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            try:
                # The database driver blocks: keep it off the worker's event loop.
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
                        if not future.done():
                            future.set_result(result)
                continue
            for (batch, future), result in zip(group, results, strict=True):
                if not future.done():  # the activity may have been cancelled (timed out)
                    future.set_result(result)
                if self._metrics is not None and result.recorded:
                    self._observe(batch)

    def _observe(self, batch: RecordRunEventsInput) -> None:
        assert self._metrics is not None
        tenant = batch.workflow_id.split("/", 1)[0]
        for event in batch.events:
            step, run = event.step, event.run
            if step and step.status in _FINISHED_STEP and step.started_at and step.finished_at:
                seconds = (step.finished_at - step.started_at).total_seconds()
                self._metrics.duration.labels(step.type, step.status.value).observe(seconds)
            if run is not None and run.status in RUN_FINISHED:
                self._metrics.finished_runs.labels(tenant, run.status.value).inc()

    def _write(self, batches: list[RecordRunEventsInput]) -> list[RecordRunEventsResult]:
        try:
            # Optimistic: almost every batch is new, so skip the read of recorded ids (one
            # database round trip on the workflow's critical path)...
            with transaction(self._sessions) as session:
                return [record_run_events(session, b, assume_new=True) for b in batches]
        except IntegrityError:
            # ...and when an id was recorded already (a retried or replayed batch), the
            # transaction rolled back whole: write again, skipping what is there.
            with transaction(self._sessions) as session:
                return [record_run_events(session, batch) for batch in batches]
