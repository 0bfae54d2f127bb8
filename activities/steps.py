"""The `run_step` activity: adapts a workflow's RunStepInput to a step executor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from datetime import timedelta
from pathlib import Path

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.names import RUN_STEP, STEP_ATTEMPT_FAILED_SIGNAL, WORKER_LOST
from schemas.run import RunStepInput, StepAttemptFailed, StepResult
from steps.base import StepContext, StepError
from steps.registry import Executors, execute_step

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = timedelta(seconds=5)
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
    ) -> None:
        self._executors = executors
        self._work_root = work_root
        self._client = client

    @activity.defn(name=RUN_STEP)
    async def run_step(self, input: RunStepInput) -> StepResult:
        info = activity.info()
        step = input.step
        attempt = input.attempt_offset + info.attempt
        work_dir = self._work_root / run_dir_name(input.context.run_id) / step.id
        ctx = StepContext(
            run=input.context,
            step_id=step.id,
            attempt=attempt,
            idempotency_key=f"{input.context.run_id}/{step.id}",
            source_dir=Path(input.source_dir),
            work_dir=work_dir,
            heartbeat=activity.heartbeat,
        )
        heartbeats = _start_heartbeats(info.heartbeat_timeout)
        try:
            # execute_step stamps the attempt and its start and finish times on the result.
            return await execute_step(self._executors, step, ctx)
        except StepError as err:
            will_retry = (
                err.retryable
                and attempt < step.retry.max_attempts
                and err.error_type not in step.retry.non_retryable_errors
            )
            # Compensation steps have no row of their own in the run state to mark RETRYING.
            if will_retry and not input.compensation:
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


def _start_heartbeats(timeout: timedelta | None) -> asyncio.Task[None] | None:
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
                activity.heartbeat()

    return asyncio.create_task(beat())
