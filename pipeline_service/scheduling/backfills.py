"""The service's side of backfills: start one (once per spec), read its progress, signal it."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from pipeline_service.launcher import PIPELINE_KEY, TENANT_KEY
from pipeline_service.scheduling.backfill_plan import backfill_id
from schemas.scheduling import BackfillInput, BackfillProgress, BackfillSpec, Empty
from workflows.backfill import BackfillWorkflow, backfill_workflow_id


async def start_backfill(
    client: Client, spec: BackfillSpec, *, task_queue: str
) -> tuple[str, bool]:
    """(the backfill's id, whether this call started it). The same spec again names the same
    backfill, running or finished: it is not started twice."""
    identifier = backfill_id(spec)
    try:
        await client.start_workflow(
            BackfillWorkflow.run,
            BackfillInput(backfill_id=identifier, spec=spec),
            id=backfill_workflow_id(spec.tenant, identifier),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(TENANT_KEY, spec.tenant),
                    SearchAttributePair(PIPELINE_KEY, spec.pipeline),
                ]
            ),
            memo={"tenant": spec.tenant, "pipeline": spec.pipeline},
        )
    except WorkflowAlreadyStartedError:
        return identifier, False
    return identifier, True


async def backfill_progress(
    client: Client, tenant: str, identifier: str
) -> BackfillProgress | None:
    """The backfill's progress (also after it finished), or None if the tenant has none such."""
    handle = client.get_workflow_handle(backfill_workflow_id(tenant, identifier))
    try:
        return await handle.query(BackfillWorkflow.progress)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def signal_backfill(client: Client, tenant: str, identifier: str, action: str) -> bool:
    """pause, resume or cancel; False if there is no such running backfill."""
    handle = client.get_workflow_handle(backfill_workflow_id(tenant, identifier))
    signal = {
        "pause": BackfillWorkflow.pause,
        "resume": BackfillWorkflow.resume,
        "cancel": BackfillWorkflow.cancel,
    }[action]
    try:
        await handle.signal(signal, Empty())
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True
