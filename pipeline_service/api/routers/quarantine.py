"""Dead-letter replay: re-feed a quality check's quarantined rows, once fixed, to the pipeline."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header

from pipeline_service.api.deps import OperatorDep, ServicesDep, tenant_of
from pipeline_service.api.models import Request, RunDetail
from pipeline_service.api.problems import ProblemError
from pipeline_service.api.routers.runs import (
    IDEMPOTENCY_KEY_PATTERN,
    finished_run,
    follow_up,
    launch_and_show,
)
from pipeline_service.launcher import LaunchRequest
from schemas.pipeline import PipelineDefinition, QualityStep
from schemas.run import ReplaySource

router = APIRouter(tags=["runs"])


class QuarantineReplay(Request):
    step: str | None = None
    """The quality step, when more than one has a check of that name."""


def replay_source(
    definition: PipelineDefinition, run_id: str, check: str, step: str | None
) -> ReplaySource:
    """Where the quarantined rows of `check` are, or a 404/409/422 problem saying why not."""
    found = [
        (s, c)
        for s in definition.steps
        if isinstance(s, QualityStep) and (step is None or s.id == step)
        for c in s.checks
        if c.check_name == check
    ]
    if not found:
        where = f"step '{step}'" if step else "any quality step"
        raise ProblemError(404, f"check '{check}' of {where} of the run's pipeline")
    if len(found) > 1:
        steps = ", ".join(s.id for s, _ in found)
        raise ProblemError(409, f"check '{check}' is in several steps ({steps}): give step")
    quality, rule = found[0]
    if not rule.ROW_LEVEL:
        raise ProblemError(
            422,
            f"check '{check}' ({rule.type}) judges the table as a whole: it quarantines no rows",
        )
    return ReplaySource(
        run_id=run_id,
        step=quality.id,
        check=check,
        schema_name=quality.quarantine_schema,
        table=f"{quality.id}__{check}",
    )


@router.post(
    "/v1/runs/{run_id}/quarantine/{check}/replay", status_code=201, response_model=RunDetail
)
async def replay(
    run_id: str,
    check: str,
    body: QuarantineReplay,
    principal: OperatorDep,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(pattern=IDEMPOTENCY_KEY_PATTERN)] = None,
) -> RunDetail:
    """A new run of the same version, params and logical date, linked to this one, whose
    templates see `replay` (the quarantine table and this run's id): the pipeline's load step
    reads the fixed rows from there instead of its source."""
    tenant = tenant_of(principal)

    def plan() -> LaunchRequest:
        with services.sessions() as session:
            run, definition = finished_run(session, tenant.id, run_id, "replay")
            source = replay_source(definition, run.workflow_id, check, body.step)
            return follow_up(
                session,
                run,
                tenant,
                principal.actor,
                idempotency_key,
                f"replay:{run.public_id}:{check}",
                replay=source,
                replay_of_id=run.id,
            )

    request = await anyio.to_thread.run_sync(plan)
    return (await launch_and_show(services, request, "replay"))[1]
