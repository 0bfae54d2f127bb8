"""Names shared by workflows and activities (workflows import these, never activity code)."""

RUN_STEP = "run_step"
"""Activity: execute one step (RunStepInput -> StepResult)."""

STEP_ATTEMPT_FAILED_SIGNAL = "step_attempt_failed"
"""Signal sent by `run_step` when an attempt failed and Temporal will retry it."""

WORKER_LOST = "LaminarWorkerLost"
"""Failure type of an attempt whose worker stopped or died; the workflow reschedules it
without spending a retry."""

STATE_QUERY = "state"
"""Query on PipelineRunWorkflow: the live RunState."""
