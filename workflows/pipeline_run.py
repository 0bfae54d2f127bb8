"""PipelineRunWorkflow: runs one pipeline's DAG of steps as Temporal activities."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.names import (
        RUN_STEP,
        STATE_QUERY,
        STEP_ATTEMPT_FAILED_SIGNAL,
        WORKER_LOST,
    )
    from schemas.pipeline import OnFailure, Step
    from schemas.run import (
        STEP_ACTIVE,
        RunInput,
        RunState,
        RunStatus,
        RunStepInput,
        RunSummary,
        StepAttemptFailed,
        StepResult,
        StepState,
        StepStatus,
    )
    from workflows import dag

DEFAULT_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
PIPELINE_FAILED = "PipelineFailed"


def _describe_failure(error: BaseException) -> tuple[str, str]:
    """(message, type) of an activity failure, from its root cause."""
    cause = error.cause if isinstance(error, ActivityError) and error.cause else error
    if isinstance(cause, ApplicationError):
        return cause.message, cause.type or "ApplicationError"
    if isinstance(cause, TimeoutError):
        kind = cause.type.name if cause.type is not None else "TIMEOUT"
        return f"step timed out ({kind.lower().replace('_', '-')})", "Timeout"
    return str(cause), type(cause).__name__


@workflow.defn(name="PipelineRunWorkflow")
class PipelineRunWorkflow:
    @workflow.init
    def __init__(self, input: RunInput) -> None:
        self._input = input
        self._status = RunStatus.RUNNING
        self._started_at = workflow.now()
        self._finished_at: datetime | None = None
        self._error: str | None = None
        self._states = {
            step.id: StepState(step_id=step.id, type=step.type) for step in input.pipeline.steps
        }
        self._completed: list[str] = []

    @workflow.run
    async def run(self, input: RunInput) -> RunSummary:
        pipeline = input.pipeline
        graph = dag.dependencies(pipeline.steps)
        steps = {step.id: step for step in pipeline.steps}
        position = {step_id: i for i, step_id in enumerate(graph)}
        limit = input.max_parallelism or pipeline.max_parallelism
        running: dict[asyncio.Task[StepResult], str] = {}
        try:
            while True:
                statuses = {step_id: state.status for step_id, state in self._states.items()}
                for step_id in dag.ready(graph, statuses)[: max(limit - len(running), 0)]:
                    self._mark_started(step_id)
                    task = asyncio.create_task(self._execute(steps[step_id]))
                    running[task] = step_id
                if not running:
                    break
                done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: position[running[t]]):
                    self._finish(graph, running.pop(task), task)
        except asyncio.CancelledError:
            await self._cancel(running)
            raise

        failed = [s for s, st in self._states.items() if st.status == StepStatus.FAILED]
        if failed and pipeline.on_failure == OnFailure.COMPENSATE:
            await self._compensate(steps)
        self._finished_at = workflow.now()
        if failed:
            self._status = RunStatus.FAILED
            first = self._states[failed[0]]
            self._error = f"step '{first.step_id}' failed: {first.error}"
            raise ApplicationError(
                f"pipeline '{pipeline.name}' failed: {self._error}",
                self._summary(),
                type=PIPELINE_FAILED,
                non_retryable=True,
            )
        self._status = RunStatus.SUCCEEDED
        return self._summary()

    @workflow.query(name=STATE_QUERY)
    def state(self) -> RunState:
        return self._summary()

    @workflow.signal(name=STEP_ATTEMPT_FAILED_SIGNAL)
    def step_attempt_failed(self, signal: StepAttemptFailed) -> None:
        state = self._states.get(signal.step_id)
        if state is None or state.status not in STEP_ACTIVE:
            return  # late or duplicate: the step has already finished
        if signal.attempt >= state.attempt:
            state.status = StepStatus.RETRYING
            state.attempt = signal.attempt + 1
            state.error = signal.error

    async def _cancel(self, running: dict[asyncio.Task[StepResult], str]) -> None:
        """The run was cancelled: cancel running steps and wait for them to acknowledge."""
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for state in self._states.values():
            if state.status in STEP_ACTIVE:
                state.status, state.finished_at = StepStatus.CANCELLED, workflow.now()
            elif state.status == StepStatus.PENDING:
                state.status, state.error = StepStatus.SKIPPED, "run cancelled"
        self._status = RunStatus.CANCELLED
        self._finished_at = workflow.now()

    def _mark_started(self, step_id: str) -> None:
        state = self._states[step_id]
        state.status = StepStatus.RUNNING
        state.attempt = 1
        state.started_at = workflow.now()

    def _finish(self, graph: dag.Graph, step_id: str, task: asyncio.Task[StepResult]) -> None:
        state = self._states[step_id]
        state.finished_at = workflow.now()
        error = task.exception()
        if error is None:
            result = task.result()
            state.status = StepStatus.SUCCEEDED
            state.result = result
            state.attempt = result.attempt
            state.error = None
            state.started_at = result.started_at or state.started_at
            state.finished_at = result.finished_at or state.finished_at
            self._completed.append(step_id)
            return
        state.status = StepStatus.FAILED
        state.error, state.error_type = _describe_failure(error)
        statuses = {s: st.status for s, st in self._states.items()}
        for skipped in dag.to_skip(graph, step_id, statuses):
            self._states[skipped].status = StepStatus.SKIPPED
            self._states[skipped].error = f"upstream step '{step_id}' failed"

    async def _compensate(self, steps: dict[str, Step]) -> None:
        with_compensation = [s.id for s in steps.values() if s.compensate is not None]
        for step_id in dag.compensation_order(self._completed, with_compensation):
            undo = steps[step_id].compensate
            assert undo is not None
            state = self._states[step_id]
            state.status = StepStatus.COMPENSATING
            try:
                await self._execute(undo, compensation=True)
            except ActivityError as err:
                state.status = StepStatus.COMPENSATION_FAILED
                message, _ = _describe_failure(err)
                state.error = f"compensation failed: {message}"
            else:
                state.status = StepStatus.COMPENSATED

    async def _execute(self, step: Step, *, compensation: bool = False) -> StepResult:
        """Run one step as an activity; a worker lost mid-attempt does not use up a retry."""
        retry = step.retry
        offset = 0
        execution = 1
        while True:
            activity_id = step.id if execution == 1 else f"{step.id}#{execution}"
            try:
                result: StepResult = await workflow.execute_activity(
                    RUN_STEP,
                    RunStepInput(
                        step=step,
                        context=self._input.context,
                        source_dir=self._input.source_dir,
                        attempt_offset=offset,
                        compensation=compensation,
                    ),
                    result_type=StepResult,
                    activity_id=activity_id,
                    start_to_close_timeout=step.timeout,
                    heartbeat_timeout=step.heartbeat_timeout or DEFAULT_HEARTBEAT_TIMEOUT,
                    retry_policy=TemporalRetryPolicy(
                        initial_interval=retry.initial_interval,
                        backoff_coefficient=retry.backoff_coefficient,
                        maximum_interval=retry.maximum_interval,
                        maximum_attempts=retry.max_attempts - offset,
                        non_retryable_error_types=[*retry.non_retryable_errors, WORKER_LOST],
                    ),
                )
                return result
            except ActivityError as err:
                cause = err.cause
                if not (isinstance(cause, ApplicationError) and cause.type == WORKER_LOST):
                    raise
                # The attempt died with its worker: run it again on a live worker, keeping the
                # retry budget of the attempts before it.
                lost_attempt = int(cause.details[0]) if cause.details else offset + 1
                offset = max(lost_attempt - 1, offset)
                execution += 1
                workflow.logger.info("step %s lost its worker; rescheduling", step.id)

    def _summary(self) -> RunSummary:
        return RunSummary(
            run_id=self._input.context.run_id,
            pipeline=self._input.pipeline.name,
            status=self._status,
            started_at=self._started_at,
            finished_at=self._finished_at,
            steps=[state.model_copy() for state in self._states.values()],
            error=self._error,
        )
