"""The `run_step` activity: adapts a workflow's RunStepInput to a step executor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.artifacts import (
    LOG_NAME,
    ArtifactStore,
    AttemptLog,
    HandoffError,
    HandoffTables,
    log_key,
)
from activities.names import RUN_STEP, STEP_ATTEMPT_FAILED_SIGNAL, WORKER_LOST
from schemas.pipeline import SensorStep, SqlStep
from schemas.recording import (
    RunEvent,
    attempt_ended_event,
    attempt_started_event,
    run_started_event,
)
from schemas.run import RunStepInput, StepAttemptFailed, StepResult
from schemas.sql_templates import render_sql
from steps.base import StepContext, StepError
from steps.engines.duckdb import DuckDBEngine
from steps.registry import Executors, connection_secret_names, execute_step
from steps.sql import referenced_tables, target_tables

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = timedelta(seconds=5)
LOG_UPLOAD_EVERY = timedelta(seconds=30)

BUNDLE_PREFIX = "bundle:"
"""A run's `source_dir` naming its version's code bundle (`bundle:<sha256>`)."""
BundleResolver = Callable[[str, str], Awaitable[Path]]
"""(tenant, bundle digest) -> the bundle's directory on this worker."""

SecretResolver = Callable[[str, set[str]], Awaitable[dict[str, str]]]
"""(tenant, secret names) -> their values; a missing name is simply absent."""
AttemptSink = Callable[[str, list[RunEvent]], None]
"""(workflow id, events) -> None: queues an attempt's own transitions for the worker's
background recorder (`activities.recording.AttemptRecorder.submit`); returns at once."""
_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._\-]+")


def run_dir_name(run_id: str) -> str:
    """A run id (`tenant/pipeline/2026-01-31T00:00:00+00:00`) as one safe directory name."""
    return _UNSAFE_PATH_CHARS.sub("_", run_id).strip("._") or "run"


class StepActivities:
    """Holds what step execution needs across calls: executors, the work root, a client."""

    def __init__(
        self,
        executors: Executors,
        work_root: Path,
        client: Client | None = None,
        secrets: SecretResolver | None = None,
        bundles: BundleResolver | None = None,
        warehouse: DuckDBEngine | None = None,
        artifacts: ArtifactStore | None = None,
        log_upload_every: timedelta = LOG_UPLOAD_EVERY,
        record_attempts: AttemptSink | None = None,
    ) -> None:
        """With `artifacts` (LAMINAR_ARTIFACT_URL), step logs and hand-off tables go through
        that store, so a run's steps may land on different workers (activities/artifacts.py)."""
        self._executors = executors
        self._record_attempts = record_attempts
        self._work_root = work_root
        self._client = client
        self._secrets = secrets
        self._bundles = bundles
        self._warehouse = warehouse
        self._artifacts = artifacts
        self._log_upload_every = log_upload_every
        self._handoff = (
            HandoffTables(artifacts, warehouse, work_root / ".handoff")
            if artifacts is not None and warehouse is not None
            else None
        )

    @activity.defn(name=RUN_STEP)
    async def run_step(self, input: RunStepInput) -> StepResult:
        info = activity.info()
        # A for_each instance runs its step under the instance's name (`<id>[<index>]`).
        step = (
            input.step.model_copy(update={"id": input.instance}) if input.instance else input.step
        )
        attempt = input.attempt_offset + info.attempt
        progress = _Progress()
        # Log records of this attempt (ours and the worker's) carry its step and attempt; the
        # binding lives in this activity's task only.
        structlog.contextvars.bind_contextvars(
            run_id=input.context.run_id, step_id=step.id, attempt=attempt
        )
        own_events = (
            _AttemptEvents(self._record_attempts, info, input, attempt)
            if self._record_attempts is not None and input.record_attempt
            else None
        )
        work_dir = self._work_root / run_dir_name(input.context.run_id) / step.id
        secrets = await self._resolve_secrets(input)
        source_dir = await self._source_dir(input)
        ctx = StepContext(
            run=input.context,
            step_id=step.id,
            attempt=attempt,
            idempotency_key=f"{input.context.run_id}/{step.id}",
            source_dir=source_dir,
            work_dir=work_dir,
            # A local activity cannot heartbeat (validation keeps local steps short).
            heartbeat=_no_heartbeat if info.is_local else progress.report,
            upstream=input.upstream,
            secrets=secrets,
            # The step's first start: from the workflow, or (runs from before it passed it, whose
            # retries were Temporal's, of this one activity) when Temporal first scheduled it.
            step_started_at=input.step_started_at or info.scheduled_time,
            attempt_deadline=(
                info.started_time + info.start_to_close_timeout
                if info.start_to_close_timeout
                else None
            ),
        )
        heartbeats = _start_heartbeats(info.heartbeat_timeout, progress)
        attempt_log = self._attempt_log(input, ctx)
        try:
            await self._check_upstream_tables(input, ctx)
            before = await self._table_versions(input)
            # execute_step stamps the attempt and its start and finish times on the result.
            # A sensor's timeout is its whole wait; one check (this activity) has check_timeout.
            limit = step.check_timeout if isinstance(step, SensorStep) else step.timeout
            result = await _within_timeout(limit, execute_step(self._executors, step, ctx))
            if before is not None:
                result = await self._with_written_tables(input, ctx, before, result)
            await self._export_tables(input, result)
            result = _redacted_result(result, ctx) if secrets else result
            if own_events is not None:
                own_events.ended(result=result)
            return result
        except StepError as err:
            # What leaves the activity goes into the workflow's history: no secret values.
            err.message = ctx.redact(err.message)
            err.args = (err.message,)
            if own_events is not None:
                own_events.ended(error=err.message, error_type=err.error_type)
            will_retry = (
                err.retryable
                and attempt < step.retry.max_attempts
                and err.error_type not in step.retry.non_retryable_errors
            )
            # Compensation steps have no row of their own in the run state to mark RETRYING.
            # A local step's retries happen inside the workflow's task, which a signal arriving
            # meanwhile disturbs: seen here, the step started over from attempt 1 (its failed
            # attempts were not recorded yet). So a local step's retries do not show live.
            # (Runs with workflow-driven retries need no signal at all: report_retries is off.)
            report = input.report_retries and not input.compensation and not info.is_local
            if will_retry and report:
                await self._report_retry(input, attempt, err)
            raise ApplicationError(
                err.message, attempt, type=err.error_type, non_retryable=not err.retryable
            ) from err
        except asyncio.CancelledError:
            if activity.is_worker_shutdown():
                # Not the step's fault: let the workflow run this attempt again elsewhere.
                raise ApplicationError(
                    "worker stopped during the step", attempt, type=WORKER_LOST, non_retryable=True
                ) from None
            raise
        finally:
            if heartbeats is not None:
                heartbeats.cancel()
            if attempt_log is not None:
                await attempt_log.finish()

    def _attempt_log(self, input: RunStepInput, ctx: StepContext) -> AttemptLog | None:
        """With an artifact store: this attempt's log goes there (masked) as it grows."""
        if self._artifacts is None or activity.info().is_local:
            return None
        key = log_key(ctx.run.tenant, ctx.run.run_id, ctx.step_id, ctx.attempt)
        uploader = AttemptLog(
            self._artifacts, ctx.work_dir / LOG_NAME, key, ctx.redact, self._log_upload_every
        )
        uploader.start()
        return uploader

    async def _table_versions(self, input: RunStepInput) -> dict[str, tuple[int, int]] | None:
        """With an artifact store, before a DuckDB `sql` step: the warehouse's tables, to tell
        afterwards which ones the step created or wrote. None otherwise (no extra work)."""
        if self._handoff is None or self._warehouse is None or not _writes_warehouse(input):
            return None
        return await self._warehouse.table_versions()

    async def _with_written_tables(
        self,
        input: RunStepInput,
        ctx: StepContext,
        before: dict[str, tuple[int, int]],
        result: StepResult,
    ) -> StepResult:
        """`result` with `written`: the tables the step created, replaced or grew (asked from
        DuckDB, so a table made by a SQL file counts too) and those its statements write
        (sqlglot: an UPDATE changes neither the table's oid nor its size)."""
        assert self._warehouse is not None and isinstance(input.step, SqlStep)
        after = await self._warehouse.table_versions()
        written = {name for name, version in after.items() if before.get(name) != version}
        text, _ = render_sql(input.step.sql, ctx.run, ctx.upstream)
        canonical = {name.lower(): name for name in after}
        for target in target_tables(text, input.step.source_dialect):
            name = target.lower().removeprefix("main.")
            if name in canonical:
                written.add(canonical[name])
        written -= set(result.tables.values())
        return result.model_copy(update={"written": sorted(written)}) if written else result

    async def _export_tables(self, input: RunStepInput, result: StepResult) -> None:
        """Output tables of a DuckDB step go to the artifact store for steps on other workers."""
        if self._handoff is None or not (result.tables or result.written):
            return
        context = input.context
        try:
            await self._handoff.export(
                context.tenant,
                context.run_id,
                input.step.id,
                sorted(set(result.tables.values()) | set(result.written)),
            )
        except HandoffError as exc:
            raise StepError(str(exc), error_type="ArtifactStoreError", retryable=True) from exc

    async def _check_upstream_tables(self, input: RunStepInput, ctx: StepContext) -> None:
        """Tables upstream steps wrote, for a step that reads this worker's DuckDB warehouse:
        with an artifact store, those this warehouse lacks (or holds from another run) are
        imported from it; without one, a table written on another worker fails the step with
        that said, not with a bare "table does not exist"."""
        step = input.step
        if self._warehouse is None or not (
            getattr(step, "engine", None) == "duckdb" or step.type == "python"
        ):
            return
        written = {
            table: step_id
            for step_id, upstream in input.upstream.items()
            for table in upstream.tables.values()
        }
        if getattr(step, "engine", None) == "duckdb":
            # Tables ancestors' SQL wrote (only workers with an artifact store record them):
            # those a SQL step's statements name, or all when sqlglot cannot tell.
            written.update(_tables_to_import(input, ctx))
        if not written:
            return
        if self._handoff is not None:
            context = input.context
            try:
                imported = await self._handoff.import_missing(
                    context.tenant, context.run_id, written
                )
            except HandoffError as exc:
                raise StepError(str(exc), error_type="TableOnOtherWorker", retryable=False) from exc
            if imported:
                log.info("imported %s from the artifact store", ", ".join(imported))
            return
        missing = await self._warehouse.missing_tables(sorted(written))
        if missing:
            where = ", ".join(f"'{t}' (from step '{written[t]}')" for t in missing)
            raise StepError(
                f"table {where} is not in this worker's DuckDB warehouse: it was written on "
                "another worker. Without an artifact store a run's DuckDB tables stay on the "
                "worker that wrote them: set LAMINAR_ARTIFACT_URL on every worker (tables then "
                "travel through it), or hand tables between steps through a shared engine "
                "(engine: trino with a connection)",
                error_type="TableOnOtherWorker",
                retryable=False,
            )

    async def _source_dir(self, input: RunStepInput) -> Path:
        """The run's files: a directory, or its version's code bundle materialized here."""
        if not input.source_dir.startswith(BUNDLE_PREFIX):
            return Path(input.source_dir)
        digest = input.source_dir.removeprefix(BUNDLE_PREFIX)
        if self._bundles is None:
            raise ApplicationError(
                f"the run's code is bundle {digest}; this worker has no service database "
                "to fetch it from (LAMINAR_DATABASE_URL)",
                type="BundleNotFound",
                non_retryable=True,
            )
        try:
            return await self._bundles(input.context.tenant, digest)
        except ValueError as exc:  # BundleError: not there, or its files do not match
            raise ApplicationError(str(exc), type="BundleNotFound", non_retryable=True) from exc

    async def _resolve_secrets(self, input: RunStepInput) -> dict[str, str]:
        names: set[str] = getattr(input.step, "secret_names", set()) | connection_secret_names(
            self._executors, input.step
        )
        if not names:
            return {}
        if self._secrets is None:
            raise ApplicationError(
                f"step {input.step.id} references secrets ({', '.join(sorted(names))}) but this "
                "worker has no secret store (LAMINAR_SECRET_KEY and the service database)",
                type="SecretNotFound",
                non_retryable=True,
            )
        return await self._secrets(input.context.tenant, names)

    async def _report_retry(self, input: RunStepInput, attempt: int, err: StepError) -> None:
        """Tell the workflow an attempt failed so its `state` query shows RETRYING."""
        if self._client is None:
            return
        info = activity.info()
        signal = StepAttemptFailed(step_id=input.step.id, attempt=attempt, error=err.message)
        try:
            handle = self._client.get_workflow_handle(
                info.workflow_id or "", run_id=info.workflow_run_id
            )
            await handle.signal(STEP_ATTEMPT_FAILED_SIGNAL, signal)
        except Exception:  # visibility only: never turn a step failure into another failure
            log.warning("could not report retry of step %s", input.step.id, exc_info=True)


class _AttemptEvents:
    """One attempt's start (at once) and end, queued for the worker's background recorder.
    The events are those the workflow records again as its backstop (same ids, see
    `schemas.recording.attempt_event_id`), so whichever is written first stands."""

    def __init__(
        self, sink: AttemptSink, info: activity.Info, input: RunStepInput, attempt: int
    ) -> None:
        # The run's key is the one the workflow records under (its context's run id, which the
        # service makes the workflow id); the event ids are the Temporal run's.
        self._sink, self._workflow_id = sink, input.context.run_id
        self._run = info.workflow_run_id or ""
        self._step, self._type, self._attempt = input.step.id, input.step.type, attempt
        self._started_at = datetime.now(UTC)
        sink(
            self._workflow_id,
            [
                run_started_event(self._run, self._started_at),
                attempt_started_event(self._run, self._step, self._type, attempt, self._started_at),
            ],
        )

    def ended(
        self,
        result: StepResult | None = None,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        event = attempt_ended_event(
            self._run,
            self._step,
            self._type,
            self._attempt,
            datetime.now(UTC),
            result=result,
            started_at=self._started_at,
            error=error,
            error_type=error_type,
        )
        self._sink(self._workflow_id, [event])


def _tables_to_import(input: RunStepInput, ctx: StepContext) -> dict[str, str]:
    step = input.step
    if not input.handoff_tables or not isinstance(step, SqlStep):
        return input.handoff_tables
    text, _ = render_sql(step.sql, ctx.run, ctx.upstream)
    named = referenced_tables(text, step.source_dialect)
    if named is None:
        return input.handoff_tables
    return {t: s for t, s in input.handoff_tables.items() if t.lower() in named}


def _writes_warehouse(input: RunStepInput) -> bool:
    """A `sql` step on the worker's DuckDB warehouse (not a compensation: nothing reads what
    it leaves)."""
    step = input.step
    return isinstance(step, SqlStep) and step.engine == "duckdb" and not input.compensation


def _redacted_result(result: StepResult, ctx: StepContext) -> StepResult:
    """The result with secret values masked in its outputs (they go into history)."""
    text = result.model_dump_json()
    masked = ctx.redact(text)
    return result if masked == text else StepResult.model_validate_json(masked)


def _no_heartbeat(*details: object) -> None:
    """Progress reports of a local step go nowhere: local activities have no heartbeats."""


async def _within_timeout(timeout: timedelta, work: Awaitable[StepResult]) -> StepResult:
    """Enforce the step's timeout here, where the step is stopped (a script gets SIGTERM, then
    SIGKILL after its grace), so the attempt fails only once nothing of it runs any more.
    Temporal's start-to-close timeout is the backstop for a worker that died."""
    try:
        async with asyncio.timeout(timeout.total_seconds()) as deadline:
            return await work
    except TimeoutError:
        if not deadline.expired():
            raise  # the step's own TimeoutError: the registry has classified it already
        raise StepError(
            f"step timed out after {timeout.total_seconds():g}s", error_type="Timeout"
        ) from None


class _Progress:
    """The latest progress details a step reported; every heartbeat repeats them, because a
    heartbeat without details would replace them with nothing."""

    def __init__(self) -> None:
        self.details: tuple[Any, ...] = ()

    def report(self, *details: Any) -> None:
        self.details = details
        activity.heartbeat(*details)


def _start_heartbeats(timeout: timedelta | None, progress: _Progress) -> asyncio.Task[None] | None:
    """Heartbeat while the step runs, so a dead worker is noticed within the timeout.

    The one heartbeat for every step type: executors need not heartbeat to stay alive (they
    may still call `StepContext.heartbeat` to report progress details).
    """
    if not timeout:
        return None
    # Often enough to be noticed well within the timeout, and to hear of a cancellation (which
    # arrives with a heartbeat's response) within seconds.
    interval = min(max(timeout.total_seconds() / 3, 0.5), HEARTBEAT_EVERY.total_seconds())

    async def beat() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(interval)
                activity.heartbeat(*progress.details)

    return asyncio.create_task(beat())
