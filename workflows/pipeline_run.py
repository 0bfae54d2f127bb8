"""PipelineRunWorkflow: runs one pipeline's DAG of steps as Temporal activities."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    TimeoutError,
)

with workflow.unsafe.imports_passed_through():
    # `when:` conditions render with Jinja, which imports jinja2.runtime (compiling) and
    # jinja2.debug (on an error) lazily: pass them through, or the sandbox would load a
    # second copy mid-run.
    # `for_each` compiles its expression (jinja2.compiler and what it imports).
    import jinja2.compiler
    import jinja2.debug
    import jinja2.runtime  # noqa: F401

    # `import workflows.x as x`, not `from workflows import x`: the sandbox passes through only
    # modules imported by their full name; the `from` form loaded these again in every run.
    import workflows.control_flow as control_flow
    import workflows.dag as dag
    import workflows.for_each as for_each
    import workflows.pools as pools
    import workflows.retries as retries
    import workflows.sensors as sensors
    from activities.names import (
        RECORD_RUN_EVENT,
        RUN_STEP,
        STATE_QUERY,
        STEP_ATTEMPT_FAILED_SIGNAL,
        WORKER_LOST,
    )
    from schemas.handoff_checks import ancestors, referenced_steps
    from schemas.pipeline import OnFailure, SensorStep, Step
    from schemas.recording import RecordedRunStatus, RecordRunEventsResult
    from schemas.run import (
        STEP_ACTIVE,
        FanOut,
        RunContext,
        RunInput,
        RunState,
        RunStatus,
        RunStepInput,
        RunSummary,
        StepAttemptFailed,
        StepResult,
        StepState,
        StepStatus,
        UpstreamResult,
    )
    from workflows.recording import RunRecorder

DEFAULT_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
STOP_GRACE = timedelta(seconds=10)
"""Time a step gets past its timeout to stop and report (a script: SIGTERM, SIGKILL 3 s later)."""
PIPELINE_FAILED = "PipelineFailed"
LOCAL_STEPS_PATCH = "local-steps"
"""Runs started before local steps existed ran every step as a regular activity."""
WORKFLOW_DRIVEN_RETRIES = "workflow-driven-retries"
"""Patch id: one activity per attempt, retried by the workflow (see `_execute_attempts`)."""
RECORDING_PATCH = "record-run-events"
ATTEMPTS_IN_WORKER_PATCH = "record-attempts-in-worker"
"""Patch id: a step attempt's start and end are recorded by the worker that runs it, in the
background (`RunStepInput.record_attempt`); the workflow records only what only it knows and
sends the attempts' events again (same ids) ahead of that, so it no longer records, and waits
for the database, as each step starts and ends."""
CONTROL_FLOW_PATCH = "control-flow"
"""Patch id: trigger rules, `when:`, `on_failure: ignore` and fail_fast (`_control`)."""
STEP_STARTED_AT_PATCH = "step-started-at"
"""Patch id: each attempt's input carries when the step's first attempt started (RunStepInput
.step_started_at), so a step's own clock (a streaming step's `until`) spans its retries."""
HANDOFF_TABLES_PATCH = "handoff-written-tables"
"""Patch id: a step's input names the tables its ancestors wrote (`RunStepInput.handoff_tables`)."""
RECORDING_TIMEOUT = timedelta(seconds=30)
RECORDING_RETRY = TemporalRetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=30)
)
"""Recording retries until the database answers: the run's record must not lose a state."""


def _cause(error: BaseException) -> BaseException | None:
    return error.cause if isinstance(error, ActivityError | ChildWorkflowError) else error


def _worker_lost(error: BaseException) -> bool:
    cause = _cause(error)
    return isinstance(cause, ApplicationError) and cause.type == WORKER_LOST


def _retryable(error: BaseException) -> bool:
    """Whether another attempt may help: not for non-retryable errors or cancellations."""
    cause = _cause(error)
    if isinstance(cause, ApplicationError):
        return not cause.non_retryable
    return isinstance(cause, TimeoutError)  # start-to-close or heartbeat: try again


def _describe_failure(error: BaseException) -> tuple[str, str]:
    """(message, type) of an activity failure, from its root cause."""
    cause = error.cause if isinstance(error, ActivityError | ChildWorkflowError) else error
    cause = cause or error
    if isinstance(cause, ApplicationError):
        return cause.message, cause.type or "ApplicationError"
    if isinstance(cause, TimeoutError):
        kind = cause.type.name if cause.type is not None else "TIMEOUT"
        return f"step timed out ({kind.lower().replace('_', '-')})", "Timeout"
    return str(cause), type(cause).__name__


async def _run_step_activity(
    step: Step,
    input: RunStepInput,
    activity_id: str,
    retry_policy: TemporalRetryPolicy,
    grace: timedelta = timedelta(0),
) -> StepResult:
    """The step as one activity: a local one if the step runs local (and this run's history is
    new enough to know local steps), else a regular one. `grace` is added to the step's
    timeout: time for the activity to stop the step itself before Temporal gives up on it."""
    result: StepResult
    if step.runs_local and workflow.patched(LOCAL_STEPS_PATCH):
        result = await workflow.execute_local_activity(
            RUN_STEP,
            input,
            result_type=StepResult,
            activity_id=activity_id,
            start_to_close_timeout=step.local_timeout + grace,
            retry_policy=retry_policy,
        )
        return result
    result = await workflow.execute_activity(
        RUN_STEP,
        input,
        result_type=StepResult,
        activity_id=activity_id,
        start_to_close_timeout=step.timeout + grace,
        heartbeat_timeout=step.heartbeat_timeout or DEFAULT_HEARTBEAT_TIMEOUT,
        retry_policy=retry_policy,
    )
    return result


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
        self._recorder = RunRecorder(input.context.run_id, enabled=False)
        self._recording = asyncio.Lock()  # batches are written one after the other, in order
        self._self_recording: set[str] = set()
        """Steps whose attempts record themselves (ATTEMPTS_IN_WORKER_PATCH): all but sensors."""
        self._control: control_flow.ControlFlow | None = None
        self._failing_fast = False
        self._first_started: dict[str, datetime] = {}
        self._instances: dict[str, list[StepState]] = {}
        """for_each step id -> its instances' states, as their child runs reported them."""
        self._item_contexts: dict[str, RunContext] = {}
        self._fan_out_steps: dict[str, Step] = {}
        if input.fan_out is not None:  # a child run of for_each instances
            self._init_fan_out(input, input.fan_out)
        self._ancestors: dict[str, set[str]] | None = None  # computed on first need
        # Steps an earlier run did (retry from failure): done before this run starts. Runs
        # started before `reuse` existed have it empty, so their replay takes no other path
        # and issues no other command: no patch is needed for it.
        for step_id, result in input.reuse.items():
            if (state := self._states.get(step_id)) is not None:
                state.status, state.result = StepStatus.SUCCEEDED, result
                state.attempt = result.attempt
                state.started_at, state.finished_at = result.started_at, result.finished_at

    @workflow.run
    async def run(self, input: RunInput) -> RunSummary:
        if input.fan_out is not None:
            return await self._run_instances(input.fan_out)
        pipeline = input.pipeline
        graph = dag.dependencies(pipeline.steps)
        steps = {step.id: step for step in pipeline.steps}
        position = {step_id: i for i, step_id in enumerate(graph)}
        limit = input.max_parallelism or pipeline.max_parallelism
        running: dict[asyncio.Task[StepResult], str] = {}
        # Recording is opt-in per run: histories of runs started without it replay with no
        # new commands (the flag is part of their input). The patch marker also keeps a run
        # from switching recording on mid-flight should a later build default the flag on.
        self._recorder.enabled = input.record and workflow.patched(RECORDING_PATCH)
        if self._recorder.enabled and workflow.patched(ATTEMPTS_IN_WORKER_PATCH):
            # Sensors are checked by the workflow itself and for_each steps run as child runs:
            # neither has an attempt of its own for a worker to record.
            self._self_recording = {
                s.id for s in pipeline.steps if not isinstance(s, SensorStep) and s.for_each is None
            }
            self._recorder.run_started()
        else:
            self._recorder.run(RecordedRunStatus.RUNNING)
        if workflow.patched(CONTROL_FLOW_PATCH):
            self._control = control_flow.ControlFlow(pipeline, input.context)
        for step_id in input.reuse:
            if step_id in self._states:
                self._recorder.step(self._states[step_id])
        try:
            while True:
                ready = self._ready(graph)
                if self._failing_fast:  # stop the running steps, then decide again
                    await self._cancel_steps(running)
                    continue
                for step_id in ready[: max(limit - len(running), 0)]:
                    self._mark_started(step_id)
                    task = asyncio.create_task(self._execute(steps[step_id]))
                    running[task] = step_id
                if not running:
                    break  # the final transitions are recorded with the run's end
                # One recording per workflow task: what finished and what started, together.
                await self._flush()
                done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: position[running[t]]):
                    self._finish(graph, running.pop(task), task)
        except asyncio.CancelledError:
            await self._cancel(running)
            raise

        failed = [
            s
            for s, st in self._states.items()
            if st.status == StepStatus.FAILED and not st.failure_ignored
        ]
        if failed and pipeline.on_failure == OnFailure.COMPENSATE:
            await self._compensate(steps)
        self._finished_at = workflow.now()
        if failed:
            self._status = RunStatus.FAILED
            first = self._states[failed[0]]
            self._error = f"step '{first.step_id}' failed: {first.error}"
            self._recorder.run(RecordedRunStatus.FAILED, self._error)
            await self._flush()
            raise ApplicationError(
                f"pipeline '{pipeline.name}' failed: {self._error}",
                self._summary(),
                type=PIPELINE_FAILED,
                non_retryable=True,
            )
        self._status = RunStatus.SUCCEEDED
        self._recorder.run(RecordedRunStatus.SUCCEEDED)
        await self._flush()
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
            self._recorder.step(
                state, attempt=signal.attempt, status=StepStatus.FAILED, error=signal.error
            )
            state.status = StepStatus.RETRYING
            state.attempt = signal.attempt + 1
            state.error = signal.error
            self._recorder.step(state)

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
            else:
                continue
            self._recorder.step(state)
        self._status = RunStatus.CANCELLED
        self._finished_at = workflow.now()
        self._recorder.run(RecordedRunStatus.CANCELLED, "cancelled")
        await self._flush()

    def _mark_started(self, step_id: str) -> None:
        state = self._states[step_id]
        state.status = StepStatus.RUNNING
        state.attempt = 1
        state.started_at = workflow.now()
        if step_id in self._self_recording:
            self._recorder.attempt_started(state, 1)
        else:
            self._recorder.step(state)

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
            if step_id in self._self_recording:
                self._recorder.attempt_ended(state, state.attempt, result=result)
            else:
                self._recorder.step(state)
            return
        state.status = StepStatus.FAILED
        state.error, state.error_type = _describe_failure(error)
        ended = step_id in self._self_recording
        if ended:
            self._recorder.attempt_ended(
                state, state.attempt, error=state.error, error_type=state.error_type
            )
        if self._control is not None:
            self._failed_with_control_flow(state, ended=ended)
            return
        if not ended:
            self._recorder.step(state)
        statuses = {s: st.status for s, st in self._states.items()}
        for skipped in dag.to_skip(graph, step_id, statuses):
            self._states[skipped].status = StepStatus.SKIPPED
            self._states[skipped].error = f"upstream step '{step_id}' failed"
            self._recorder.step(self._states[skipped])

    def _ready(self, graph: dag.Graph) -> list[str]:
        """Steps to start now; with control flow, also skips and fails the steps whose trigger
        rule or `when:` decides so."""
        if self._control is None:
            return dag.ready(graph, {step_id: st.status for step_id, st in self._states.items()})
        decisions = self._control.decide(self._states)
        for step_id, reason in [*decisions.skip.items(), *decisions.fail.items()]:
            state = self._states[step_id]
            state.status = StepStatus.SKIPPED if step_id in decisions.skip else StepStatus.FAILED
            state.error = reason
            if state.status == StepStatus.FAILED:
                state.error_type, state.finished_at = "ConditionError", workflow.now()
                self._failed_with_control_flow(state)
            else:
                self._recorder.step(state)
        return decisions.run

    def _failed_with_control_flow(self, state: StepState, ended: bool = False) -> None:
        """A step failed for good: ignored (`on_failure: ignore`), or maybe the run fails fast.
        `ended`: the attempt's end is noted already (as it is; an ignored failure's note is
        recorded on top)."""
        assert self._control is not None
        ignored = self._control.ignores_failure(state.step_id)
        if ignored:
            state.failure_ignored = True
            state.error = f"{state.error}{control_flow.IGNORED_NOTE}"
        elif self._control.note_failure(state.step_id):
            self._failing_fast = True
        if ignored or not ended:
            self._recorder.step(state)

    async def _cancel_steps(self, running: dict[asyncio.Task[StepResult], str]) -> None:
        """fail_fast: cancel the running steps and wait for them to acknowledge."""
        self._failing_fast = False
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        first = self._control.failed_fast if self._control is not None else None
        reason = f"cancelled: the run failed fast (step '{first}' failed)"
        for step_id in running.values():
            state = self._states[step_id]
            state.status, state.error, state.finished_at = (
                StepStatus.CANCELLED,
                reason,
                workflow.now(),
            )
            self._recorder.step(state)
        running.clear()

    async def _compensate(self, steps: dict[str, Step]) -> None:
        with_compensation = [s.id for s in steps.values() if s.compensate is not None]
        for step_id in dag.compensation_order(self._completed, with_compensation):
            undo = steps[step_id].compensate
            assert undo is not None
            state = self._states[step_id]
            state.status = StepStatus.COMPENSATING
            self._recorder.step(state)
            await self._flush()
            try:
                await self._execute(undo, compensation=True)
            except (ActivityError, ApplicationError) as err:  # local: the cause itself
                state.status = StepStatus.COMPENSATION_FAILED
                message, _ = _describe_failure(err)
                state.error = f"compensation failed: {message}"
            else:
                state.status = StepStatus.COMPENSATED
            self._recorder.step(state)

    async def _execute(self, step: Step, *, compensation: bool = False) -> StepResult:
        """Run one step to success or its last failed attempt."""
        fans_out = step.for_each is not None and not compensation
        if fans_out and workflow.patched(for_each.FOR_EACH_PATCH):
            return await self._fan_out(step)
        if isinstance(step, SensorStep) and workflow.patched(sensors.SENSORS_PATCH):
            return await self._wait_for_sensor(step)
        if workflow.patched(WORKFLOW_DRIVEN_RETRIES):
            return await self._execute_attempts(step, compensation)
        return await self._execute_with_temporal_retries(step, compensation)

    async def _wait_for_sensor(self, step: SensorStep) -> StepResult:
        """A sensor: the workflow checks and sleeps until it holds or times out (sensors.py)."""
        run_input = RunStepInput(
            **self._step_of(step),
            source_dir=self._input.source_dir,
            upstream=self._upstream(step),
            handoff_tables=self._handoff_tables(step),
            report_retries=False,
        )
        return await sensors.wait(step, run_input)

    async def _execute_attempts(self, step: Step, compensation: bool) -> StepResult:
        """One activity per attempt, the workflow deciding retries and backoff (a durable
        timer): every failed attempt, whatever ended it (an error, a timeout, a heartbeat
        that stopped, a lost worker), is an event here and shows in the run state."""
        attempt, execution = 1, 1
        while True:
            activity_id = step.id if execution == 1 else f"{step.id}#{execution}"
            try:
                return await self._run_attempt(step, attempt, activity_id, compensation)
            except (ActivityError, ApplicationError) as err:
                # A regular activity's failure is an ActivityError around its cause; a local
                # activity's final failure arrives as the cause itself.
                message, error_type = _describe_failure(err)
                execution += 1
                if _worker_lost(err):
                    # Not the step's fault: the same attempt again, on a live worker. It shows
                    # RETRYING until it ends (the workflow does not see it start).
                    self._mark_retrying(step, attempt, f"worker lost: {message}", compensation)
                    continue
                delay = retries.next_delay(step.retry, attempt, error_type, _retryable(err))
                if delay is None or self._past_deadline(delay):
                    raise
                self_recorded = step.id in self._self_recording and not compensation
                if self_recorded:
                    self._recorder.attempt_ended(
                        self._states[step.id], attempt, error=message, error_type=error_type
                    )
                elif not compensation:  # the failed attempt's own record, then the next one's
                    self._recorder.step(
                        self._states[step.id],
                        attempt=attempt,
                        status=StepStatus.FAILED,
                        error=message,
                        error_type=error_type,
                        finished_at=workflow.now(),
                    )
                attempt += 1
                self._mark_retrying(step, attempt, message, compensation)
                await self._flush()
                await workflow.sleep(delay)
                if self_recorded:  # the attempt records its own start
                    self._states[step.id].status = StepStatus.RUNNING
                    self._recorder.attempt_started(self._states[step.id], attempt)
                elif not compensation:
                    self._states[step.id].status = StepStatus.RUNNING
                    self._recorder.step(self._states[step.id], started_at=workflow.now(), error="")
                    await self._flush()

    async def _run_attempt(
        self, step: Step, attempt: int, activity_id: str, compensation: bool
    ) -> StepResult:
        """One attempt of a step as one activity execution (Temporal does not retry it). The
        activity enforces the step's timeout itself and stops the step; Temporal's timeout,
        STOP_GRACE later, is the backstop for a worker that died."""
        if step.pool is not None and workflow.patched(pools.POOLS_PATCH):
            slot = pools.slot_for(self._input.context, step.pool, activity_id)
            return await pools.in_pool_slot(
                slot, lambda: self._run_attempt_activity(step, attempt, activity_id, compensation)
            )
        return await self._run_attempt_activity(step, attempt, activity_id, compensation)

    async def _run_attempt_activity(
        self, step: Step, attempt: int, activity_id: str, compensation: bool
    ) -> StepResult:
        started_at = None
        if workflow.patched(STEP_STARTED_AT_PATCH):
            # Scheduled now (past any pool slot wait): the first attempt's is the step's start.
            started_at = self._first_started.setdefault(step.id, workflow.now())
        return await _run_step_activity(
            step,
            RunStepInput(
                **self._step_of(step),
                source_dir=self._input.source_dir,
                attempt_offset=attempt - 1,
                compensation=compensation,
                upstream=self._upstream(step),
                handoff_tables=self._handoff_tables(step),
                report_retries=False,
                step_started_at=started_at,
                record_attempt=step.id in self._self_recording and not compensation,
            ),
            activity_id,
            TemporalRetryPolicy(maximum_attempts=1),
            grace=STOP_GRACE,
        )

    def _step_of(self, step: Step) -> dict[str, Any]:
        """The step and run context an attempt's input carries: a for_each instance's are its
        step's (under the step's own id, which validates) and the run's with its item."""
        context = self._item_contexts.get(step.id)
        if context is None:
            return {"step": step, "context": self._input.context}
        assert self._input.fan_out is not None
        own = step.model_copy(update={"id": self._input.fan_out.step_id})
        return {"step": own, "context": context, "instance": step.id}

    def _upstream(self, step: Step) -> dict[str, UpstreamResult]:
        """The results of the upstream steps `step`'s templates refer to, and only those:
        activity inputs stay small (validation made sure they are upstream)."""
        if self._input.fan_out is not None:  # an instance: the parent run passed them
            return self._input.fan_out.upstream
        found = {}
        for step_id in referenced_steps(step):
            state = self._states.get(step_id)
            if state is not None and state.result is not None:
                found[step_id] = UpstreamResult(
                    result=state.result.outputs, tables=state.result.tables
                )
        return found

    def _handoff_tables(self, step: Step) -> dict[str, str]:
        """Table -> the ancestor of `step` that last wrote it (`StepResult.written`, set only by
        workers with an artifact store): a descendant has more ancestors than its ancestor, so
        writers are taken in that order and the latest one's copy wins. Empty (and no patch
        marker) when no ancestor wrote any: histories from before stay as they were."""
        if self._ancestors is None:
            self._ancestors = ancestors(self._input.pipeline.steps)
        writers = sorted(
            (len(self._ancestors.get(step_id, ())), step_id)
            for step_id in self._ancestors.get(step.id, ())
            if (state := self._states.get(step_id)) is not None
            and state.result is not None
            and state.result.written
        )
        if not writers or not workflow.patched(HANDOFF_TABLES_PATCH):
            return {}
        found: dict[str, str] = {}
        for _, step_id in writers:
            result = self._states[step_id].result
            assert result is not None
            found.update(dict.fromkeys(result.written, step_id))
        return found

    def _mark_retrying(self, step: Step, attempt: int, error: str, compensation: bool) -> None:
        if compensation:
            return  # a compensation has no row of its own; its step shows COMPENSATING
        state = self._states[step.id]
        state.status, state.attempt, state.error = StepStatus.RETRYING, attempt, error
        self._recorder.step(state)

    def _past_deadline(self, delay: timedelta) -> bool:
        """Whether the next attempt would start after the run times out (Temporal's own
        retries stop there too, so the step fails with the run's summary, not a timeout)."""
        info = workflow.info()
        if info.execution_timeout is None:
            return False
        deadline = info.workflow_start_time + info.execution_timeout
        return workflow.now() + delay >= deadline

    async def _execute_with_temporal_retries(self, step: Step, compensation: bool) -> StepResult:
        """Before WORKFLOW_DRIVEN_RETRIES: Temporal retried the activity, and the activity
        signalled failed attempts (only those that raised). Kept for runs that started so."""
        retry = step.retry
        offset = 0
        execution = 1
        while True:
            activity_id = step.id if execution == 1 else f"{step.id}#{execution}"
            try:
                return await _run_step_activity(
                    step,
                    RunStepInput(
                        step=step,
                        context=self._input.context,
                        source_dir=self._input.source_dir,
                        attempt_offset=offset,
                        compensation=compensation,
                    ),
                    activity_id,
                    TemporalRetryPolicy(
                        initial_interval=retry.initial_interval,
                        backoff_coefficient=retry.backoff_coefficient,
                        maximum_interval=retry.maximum_interval,
                        maximum_attempts=retry.max_attempts - offset,
                        non_retryable_error_types=[*retry.non_retryable_errors, WORKER_LOST],
                    ),
                )
            except ActivityError as err:
                cause = err.cause
                if not (isinstance(cause, ApplicationError) and cause.type == WORKER_LOST):
                    raise
                lost_attempt = int(cause.details[0]) if cause.details else offset + 1
                offset = max(lost_attempt - 1, offset)
                execution += 1
                workflow.logger.info("step %s lost its worker; rescheduling", step.id)

    async def _flush(self) -> None:
        """Record the transitions noted since the last flush (a local activity: no server
        round trip; one database transaction, idempotent on the events' ids). Nothing when
        only attempts' own events (recorded by their workers) were noted."""
        async with self._recording:
            batch = self._recorder.take()
            if batch is None:
                return
            await workflow.execute_local_activity(
                RECORD_RUN_EVENT,
                batch,
                result_type=RecordRunEventsResult,
                start_to_close_timeout=RECORDING_TIMEOUT,
                retry_policy=RECORDING_RETRY,
            )

    def _summary(self) -> RunSummary:
        return RunSummary(
            run_id=self._input.context.run_id,
            pipeline=self._input.pipeline.name,
            status=self._status,
            started_at=self._started_at,
            finished_at=self._finished_at,
            steps=[
                copy
                for step_id, state in self._states.items()
                for copy in [state.model_copy(), *self._instances.get(step_id, [])]
            ],
            error=self._error,
        )

    # --- for_each: dynamic fan-out ------------------------------------------------------------

    async def _fan_out(self, step: Step) -> StepResult:
        """A `for_each` step: its instances run in child runs of FOR_EACH_BATCH items, one
        batch after the other (each at most `max_parallel` instances at once), so neither
        history grows with the item count. Fails if any instance did not succeed."""
        started = workflow.now()
        upstream = self._upstream(step)
        try:
            items = for_each.items_of(step, self._input.context, upstream)
        except for_each.ForEachProblem as exc:
            raise ApplicationError(
                str(exc), type=for_each.FOR_EACH_ERROR, non_retryable=True
            ) from None
        fail_fast = self._input.pipeline.on_failure == OnFailure.FAIL_FAST
        instances = self._instances.setdefault(step.id, [])
        for number, batch in enumerate(for_each.batches(step.id, items, upstream, fail_fast)):
            summary: RunSummary = await workflow.execute_child_workflow(
                "PipelineRunWorkflow",
                self._input.model_copy(update={"fan_out": batch, "reuse": {}}),
                # The run id, not workflow.info(): a replay (tests) may name the workflow
                # otherwise. They are the same for every run the launcher starts.
                id=f"{self._input.context.run_id}/{step.id}/for_each/{number}",
                result_type=RunSummary,
            )
            instances.extend(summary.steps)
            if fail_fast and summary.status != RunStatus.SUCCEEDED:
                break
        error = for_each.failure_of(step.id, instances, len(items))
        if error is not None:
            raise ApplicationError(error, type=for_each.FOR_EACH_FAILED, non_retryable=True)
        result = for_each.result_of(instances)
        result.started_at, result.finished_at = started, workflow.now()
        return result

    def _init_fan_out(self, input: RunInput, fan_out: FanOut) -> None:
        step = next(s for s in input.pipeline.steps if s.id == fan_out.step_id)
        instances = for_each.instance_steps(step, fan_out)
        self._fan_out_steps = {s.id: s for s in instances}
        self._states = {s.id: StepState(step_id=s.id, type=s.type) for s in instances}
        self._item_contexts = {
            s.id: for_each.instance_context(input.context, fan_out, i)
            for i, s in enumerate(instances)
        }

    async def _run_instances(self, fan_out: FanOut) -> RunSummary:
        """A child run of one batch of instances: at most `max_parallel` at once. Records the
        instances' transitions under the parent's run id (never the run's own status) and
        returns every instance's state (a failed instance does not fail this workflow)."""
        steps = self._fan_out_steps
        limit = next(s for s in self._input.pipeline.steps if s.id == fan_out.step_id).max_parallel
        self._recorder.enabled = self._input.record and workflow.patched(RECORDING_PATCH)
        graph: dag.Graph = {step_id: () for step_id in steps}
        position = {step_id: i for i, step_id in enumerate(steps)}
        pending = list(steps)
        running: dict[asyncio.Task[StepResult], str] = {}
        try:
            while pending or running:
                while pending and len(running) < limit:
                    step_id = pending.pop(0)
                    self._mark_started(step_id)
                    running[asyncio.create_task(self._execute(steps[step_id]))] = step_id
                await self._flush()
                done, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: position[running[t]]):
                    self._finish(graph, running.pop(task), task)
                if fan_out.fail_fast and any(
                    st.status == StepStatus.FAILED for st in self._states.values()
                ):
                    self._stop_instances(
                        running, pending, "an instance failed and the run fails fast"
                    )
                    await asyncio.gather(*running, return_exceptions=True)
                    break
        except asyncio.CancelledError:
            self._stop_instances(running, pending, "the step was cancelled")
            await asyncio.gather(*running, return_exceptions=True)
            await self._flush()
            raise
        failed = any(st.status != StepStatus.SUCCEEDED for st in self._states.values())
        self._status = RunStatus.FAILED if failed else RunStatus.SUCCEEDED
        self._finished_at = workflow.now()
        await self._flush()
        return self._summary()

    def _stop_instances(
        self, running: dict[asyncio.Task[StepResult], str], pending: list[str], reason: str
    ) -> None:
        for task, step_id in running.items():
            task.cancel()
            state = self._states[step_id]
            state.status, state.error, state.finished_at = (
                StepStatus.CANCELLED,
                f"cancelled: {reason}",
                workflow.now(),
            )
            self._recorder.step(state)
        for step_id in pending:
            state = self._states[step_id]
            state.status, state.error = StepStatus.SKIPPED, f"not started: {reason}"
            self._recorder.step(state)
        pending.clear()
