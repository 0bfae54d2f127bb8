"""The run dispatcher: starts waiting runs (QUEUED, not yet submitted) as their tenant's
concurrency slots free, highest priority first, then oldest first.

The queue lives in the database, so it survives restarts of every process; any number of
dispatchers may run (`laminar server` and `laminar worker` each run one): a slot is taken with
the tenant's row locked. A slot taken by a process that died before starting the workflow is
noticed (`submitted_at` old, no start recorded) and the start is repeated; a repeated start
of the same workflow id is a no-op."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from pipeline_service.bundles import BundleError
from pipeline_service.db import quotas
from pipeline_service.db.base import utcnow
from pipeline_service.db.models import Pipeline, PipelineVersion, Run, Tenant
from pipeline_service.db.session import transaction
from pipeline_service.launcher import build_run_input, run_source, start_workflow
from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.run import RunInput

log = logging.getLogger(__name__)

STALLED_AFTER = timedelta(seconds=15)
"""A slot taken this long ago without the workflow recording its start gets its start again."""
REPAIR_PAGE = 100
"""Stalled runs looked at per repair pass (the next pass goes on after the last one)."""
MAX_STARTED = 50_000
"""Workflow ids this dispatcher knows it has started, remembered so as not to start again."""


@dataclass(frozen=True)
class Submission:
    run: Run
    run_input: RunInput


class RunDispatcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        temporal: Callable[[], Awaitable[Client]],
        *,
        task_queue: str,
        source_dir: Path,
        interval: float = 0.5,
        bundle_cache: Path | None = None,
    ) -> None:
        self.sessions, self.temporal = sessions, temporal
        self.bundle_cache = bundle_cache
        self.task_queue, self.source_dir, self.interval = task_queue, source_dir, interval
        self._last_repair = 0.0
        self._repair_after = 0
        """The last run id the previous repair pass looked at (0: start from the oldest)."""
        self._started: dict[str, None] = {}
        """Workflow ids whose start this dispatcher sent (and Temporal took): a run whose
        workflow waits for a worker looks stalled too, and starting it again is a no-op that
        cost a definition's validation and a Temporal call per run on every pass (each
        server and worker process repairs, every 5 s, while workers are busy or away)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch every `interval` seconds until `stop` is set; errors are logged, not fatal
        (the database or Temporal may be away for a while)."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await self.dispatch_once()
                if loop.time() - self._last_repair > STALLED_AFTER.total_seconds() / 3:
                    self._last_repair = loop.time()
                    await self.repair_stalled()
            except Exception:
                log.exception("run dispatcher: pass failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def dispatch_once(self) -> int:
        """Give free slots to waiting runs and start their workflows; the number started."""
        submissions = await anyio.to_thread.run_sync(self._take_slots)
        if not submissions:
            return 0
        await self._start(submissions)
        return len(submissions)

    async def _start(self, submissions: list[Submission]) -> None:
        client = await self.temporal()
        for submission in submissions:
            await start_workflow(
                client, submission.run, submission.run_input, task_queue=self.task_queue
            )
            self._started[submission.run.workflow_id] = None
        while len(self._started) > MAX_STARTED:
            del self._started[next(iter(self._started))]

    def _take_slots(self) -> list[Submission]:
        # Read-only, but committed (see `transaction`): it runs every `interval`.
        with transaction(self.sessions) as session:
            tenants = quotas.tenants_with_waiting_runs(session)
        taken: list[Submission] = []
        for tenant_id in tenants:
            # One transaction per tenant: a tenant's lock is held only for its own decision.
            with transaction(self.sessions) as session:
                taken.extend(self._take_tenant_slots(session, tenant_id))
        return taken

    def _take_tenant_slots(self, session: Session, tenant_id: int) -> list[Submission]:
        quota = quotas.lock_quota(session, tenant_id)
        free = None
        if quota.max_concurrent_runs is not None:
            free = quota.max_concurrent_runs - quotas.active_runs(session, tenant_id)
            if free <= 0:
                return []
        taken = []
        for run in quotas.waiting_runs(session, tenant_id, limit=free):
            try:
                run_input = self._run_input(session, run)
            except (PipelineValidationError, BundleError) as exc:
                quotas.cancel_waiting(session, run, f"cannot start: {exc}")
                continue
            # The quota may have changed while the run waited.
            problems = quotas.definition_problems(
                quota, [step.type for step in run_input.pipeline.steps]
            )
            if problems:
                quotas.cancel_waiting(session, run, "cannot start: " + "; ".join(problems))
                continue
            run.submitted_at = utcnow()
            taken.append(Submission(run, run_input))
        return taken

    def _run_input(self, session: Session, run: Run) -> RunInput:
        """The workflow input of a recorded run (PipelineValidationError, BundleError)."""
        tenant = session.get(Tenant, run.tenant_id)
        pipeline = session.get(Pipeline, run.pipeline_id)
        version = session.get(PipelineVersion, run.version_id)
        assert tenant is not None and pipeline is not None and version is not None
        here, source = run_source(session, pipeline, version, self.source_dir, self.bundle_cache)
        definition = validate_pipeline(version.definition, source_dir=here)
        return build_run_input(tenant, pipeline, run, definition, source)

    async def repair_stalled(self) -> int:
        """Start again the workflows of runs whose slot was taken long ago but whose start
        was never recorded (a crash between taking the slot and starting the workflow)."""

        def stalled() -> list[Submission]:
            found = []
            with transaction(self.sessions) as session:
                runs = quotas.stalled_submissions(
                    session,
                    utcnow() - STALLED_AFTER,
                    after_id=self._repair_after,
                    limit=REPAIR_PAGE,
                )
                # A full page: the next pass goes on after it; else it starts over.
                self._repair_after = runs[-1].id if len(runs) == REPAIR_PAGE else 0
                for run in runs:
                    if run.workflow_id in self._started:
                        continue
                    try:
                        run_input = self._run_input(session, run)
                    except (PipelineValidationError, BundleError):
                        continue
                    found.append(Submission(run, run_input))
            return found

        submissions = await anyio.to_thread.run_sync(stalled)
        if submissions:
            await self._start(submissions)
        return len(submissions)
