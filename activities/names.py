"""Names shared by workflows and activities (workflows import these, never activity code)."""

RUN_STEP = "run_step"
"""Activity: execute one step (RunStepInput -> StepResult)."""

STEP_ATTEMPT_FAILED_SIGNAL = "step_attempt_failed"
"""Signal sent by `run_step` when an attempt failed and Temporal will retry it: only for runs
started before the workflow drove retries itself (patch `workflow-driven-retries`)."""

WORKER_LOST = "LaminarWorkerLost"
"""Failure type of an attempt whose worker stopped or died; the workflow reschedules it
without spending a retry."""

STATE_QUERY = "state"
"""Query on PipelineRunWorkflow: the live RunState."""

RECORD_RUN_EVENT = "record_run_event"
"""Local activity: record one workflow task's run/step transitions (RecordRunEventsInput ->
RecordRunEventsResult) in the service database, with their outbox rows."""

ACQUIRE_POOL_SLOT = "acquire_pool_slot"
"""Activity: take a slot of a step's pool (PoolSlot -> PoolSlot); fails retryably while the
pool is full, so Temporal retries it until a slot frees."""

RELEASE_POOL_SLOT = "release_pool_slot"
"""Activity: give a pool slot back (PoolSlot -> PoolSlot); idempotent."""

POOL_FULL = "LaminarPoolFull"
POOL_UNKNOWN = "LaminarPoolUnknown"
