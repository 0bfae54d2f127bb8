"""The reference for bench/overhead.py: a chain of no-op activities as plain Temporal code."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy


@activity.defn(name="bare_noop")
async def bare_noop(index: int) -> int:
    return index


@workflow.defn(name="BareChainWorkflow")
class BareChainWorkflow:
    @workflow.run
    async def run(self, steps: int) -> int:
        for i in range(steps):
            await workflow.execute_activity(
                bare_noop,
                i,
                start_to_close_timeout=timedelta(hours=1),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        return steps
