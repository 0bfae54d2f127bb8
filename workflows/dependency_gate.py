"""DependencyGateWorkflow: a downstream run for one logical date, waiting for its upstream runs.

One gate per `{tenant}/{pipeline}/{logical date}` (signal-with-start from each upstream run that
succeeds, and from the downstream's own schedule), so the run starts once, whatever order the
upstream runs finish in and however often they are retried. The gate checks the database on
each signal and on a slow timer (a lost signal only delays); past a dependency's wait timeout
it records the downstream run as FAILED, naming the upstream runs that are missing.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.names import CHECK_DEPENDENCIES, FAIL_DEPENDENT, LAUNCH_DEPENDENT
    from schemas.scheduling import (
        GateCheck,
        GateCheckInput,
        GateFailInput,
        GateInput,
        GateOutcome,
        UpstreamSignal,
    )

RECHECK = timedelta(seconds=60)
"""The slowest the gate looks again without a signal."""
MAX_CHECKS = 500
_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))
_TIMEOUT = timedelta(seconds=60)


def gate_workflow_id(tenant: str, pipeline: str, logical_date_iso: str) -> str:
    return f"laminar-gate/{tenant}/{pipeline}/{logical_date_iso}"


@workflow.defn(name="DependencyGate")
class DependencyGateWorkflow:
    @workflow.init
    def __init__(self, gate: GateInput) -> None:
        self._poked = False
        self._missing: list[str] = []

    @workflow.run
    async def run(self, gate: GateInput) -> GateOutcome:
        gate = gate.model_copy(update={"waiting_since": gate.waiting_since or workflow.now()})
        assert gate.waiting_since is not None
        for _ in range(MAX_CHECKS):
            self._poked = False
            check: GateCheck = await workflow.execute_activity(
                CHECK_DEPENDENCIES,
                GateCheckInput(gate=gate, waiting_since=gate.waiting_since, now=workflow.now()),
                result_type=GateCheck,
                start_to_close_timeout=_TIMEOUT,
                retry_policy=_RETRY,
            )
            self._missing = check.missing
            if check.gone is not None:
                return GateOutcome(detail=check.gone)
            if check.ready:
                outcome: GateOutcome = await workflow.execute_activity(
                    LAUNCH_DEPENDENT,
                    gate,
                    result_type=GateOutcome,
                    start_to_close_timeout=_TIMEOUT,
                    retry_policy=_RETRY,
                )
                return outcome
            if check.expired:
                reason = (
                    "the upstream runs it depends on did not succeed within the wait timeout: "
                    + ", ".join(check.expired)
                )
                await workflow.execute_activity(
                    FAIL_DEPENDENT,
                    GateFailInput(gate=gate, reason=reason),
                    start_to_close_timeout=_TIMEOUT,
                    retry_policy=_RETRY,
                )
                raise ApplicationError(reason, type="DependencyTimeout", non_retryable=True)
            wait = RECHECK
            if check.next_check is not None:
                wait = min(wait, max(check.next_check - workflow.now(), timedelta(seconds=1)))
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._poked, timeout=wait)
        workflow.continue_as_new(gate)

    @workflow.signal(name="upstream_succeeded")
    def upstream_succeeded(self, _: UpstreamSignal) -> None:
        self._poked = True

    @workflow.query(name="missing")
    def missing(self) -> list[str]:
        return self._missing
