"""Pool slots around a step attempt: acquire (an activity Temporal retries while the pool is
full), run the attempt, release — also when the attempt fails or the run is cancelled.

The slot count lives in the service database; a slot whose release was lost (a terminated
workflow) is reclaimed when its run is recorded finished (pipeline_service/db/pools.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.names import ACQUIRE_POOL_SLOT, POOL_UNKNOWN, RELEASE_POOL_SLOT
    from schemas.pools import PoolSlot
    from schemas.run import RunContext

POOLS_PATCH = "pools"
SLOT_TIMEOUT = timedelta(seconds=30)
WAIT_FOR_SLOT = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=1.5,
    maximum_interval=timedelta(seconds=2),
    non_retryable_error_types=[POOL_UNKNOWN],
)
"""A full pool fails the acquire attempt; Temporal retries it (no history events meanwhile)
until a slot frees or the run ends."""
RELEASE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200))

T = TypeVar("T")


def slot_for(context: RunContext, pool: str, activity_id: str) -> PoolSlot:
    return PoolSlot(
        tenant=context.tenant,
        pool=pool,
        holder=f"{context.run_id}/{activity_id}",
        workflow_id=workflow.info().workflow_id,
    )


async def in_pool_slot(slot: PoolSlot, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run `attempt` holding one slot of `slot.pool`."""
    await workflow.execute_activity(
        ACQUIRE_POOL_SLOT,
        slot,
        result_type=PoolSlot,
        activity_id=f"pool:{slot.holder}",
        start_to_close_timeout=SLOT_TIMEOUT,
        retry_policy=WAIT_FOR_SLOT,
    )
    try:
        return await attempt()
    finally:
        # Also after a cancellation (as Temporal's hello_cancellation sample cleans up): the
        # release is a new activity, which the one cancel request does not reach.
        await workflow.execute_activity(
            RELEASE_POOL_SLOT,
            slot,
            result_type=PoolSlot,
            activity_id=f"release:{slot.holder}",
            start_to_close_timeout=SLOT_TIMEOUT,
            retry_policy=RELEASE_RETRY,
        )
