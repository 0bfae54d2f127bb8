"""Scheduling paths on the dev server that the feature tests leave out: a scheduled downstream
whose own fire goes through its dependency gate; jitter delaying each fire by its stable
amount; an on-time scheduled run going before a queue full of backfill runs; the BACKFILL
events in the outbox."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from temporalio.client import Client

from pipeline_service.db.models import OutboxEvent, Pipeline, Run
from pipeline_service.db.models import Tenant as TenantRow
from pipeline_service.scheduling.fire_times import jitter_for
from schemas.pipeline import Schedule
from tests.service.conftest import Service, Tenant
from tests.service.test_backfills import wait_state
from tests.service.test_quotas import set_quota
from workflows.dependency_gate import gate_workflow_id

SLOW = [{"id": "w", "type": "python", "script": "scripts/wait_seconds.py", "args": ["2"]}]


def ticking(name: str, cron: str, steps: Any = None, **more: Any) -> dict[str, Any]:
    schedule = {"cron": cron, "overlap": "allow_all", **more.pop("schedule", {})}
    return {
        "name": name,
        "schedule": schedule,
        "steps": steps or [{"id": "a", "type": "noop"}],
        **more,
    }


def runs_in_db(service: Service, tenant: str, pipeline: str) -> list[Run]:
    with service.sessions() as session:
        rows = session.scalars(
            select(Run)
            .join(Pipeline, Pipeline.id == Run.pipeline_id)
            .join(TenantRow, TenantRow.id == Run.tenant_id)
            .where(TenantRow.name == tenant, Pipeline.name == pipeline)
            .order_by(Run.logical_date, Run.id)
        ).all()
        session.expunge_all()
        return list(rows)


async def wait_for(condition: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def pause(tenant: Tenant, *pipelines: str) -> None:
    for name in pipelines:  # the session's server keeps running: stop firing
        response = await tenant.http.post(f"/v1/pipelines/{name}/schedule/pause")
        assert response.status_code == 200, response.text


async def test_a_scheduled_downstream_fires_through_its_gate(
    service: Service, client: Client
) -> None:
    tenant = await service.tenant()
    # The upstream takes 2 s: each downstream fire comes while its upstream run still runs.
    await tenant.apply(ticking("up", "* * * * * */3", SLOW))
    await tenant.apply(
        ticking("down", "* * * * * */3", depends_on=[{"pipeline": "up", "timeout": "1m"}])
    )

    def two_downstream_runs() -> list[Run]:
        done = [r for r in runs_in_db(service, tenant.name, "down") if r.status == "SUCCEEDED"]
        return done if len(done) >= 2 else []

    await wait_for(two_downstream_runs, "two downstream runs", 60)
    await pause(tenant, "up", "down")
    ups = {r.logical_date: r for r in runs_in_db(service, tenant.name, "up")}
    downs = runs_in_db(service, tenant.name, "down")
    assert len({r.logical_date for r in downs}) == len(downs)  # one run per date
    for down in [r for r in downs if r.status == "SUCCEEDED"]:
        up = ups[down.logical_date]
        assert up.status == "SUCCEEDED" and up.finished_at is not None
        assert down.started_at is not None and down.started_at >= up.finished_at, (up, down)
        assert down.workflow_id == f"{tenant.name}/down/{down.logical_date.isoformat()}"
        # The scheduler opened the date's gate, which started the run.
        gate = gate_workflow_id(tenant.name, "down", down.logical_date.isoformat())
        description = await client.get_workflow_handle(gate).describe()
        assert description.workflow_type == "DependencyGate"


async def test_jitter_delays_each_fire_by_its_stable_amount(service: Service) -> None:
    tenant = await service.tenant()
    definition = ticking("jittery", "* * * * * */4", schedule={"jitter": "3s"})
    await tenant.apply(definition)
    runs = await wait_for(
        lambda: (
            (found := runs_in_db(service, tenant.name, "jittery")) and len(found) >= 4 and found
        ),
        "four runs",
        60,
    )
    await pause(tenant, "jittery")
    schedule = Schedule.model_validate(definition["schedule"])
    delays = []
    for run in runs[:4]:
        fire = run.logical_date + timedelta(seconds=4)
        expected = jitter_for(schedule, f"{tenant.name}/jittery", fire)
        delays.append(expected)
        # Never before its jittered time (without jitter the run is created right at the fire).
        assert run.created_at >= fire + expected - timedelta(milliseconds=50), (run, expected)
    assert max(delays) >= timedelta(milliseconds=300), delays  # the jitter really applied


async def test_an_on_time_run_goes_before_a_queue_of_backfill_runs(service: Service) -> None:
    tenant = await service.tenant()
    await set_quota(service, tenant, max_concurrent_runs=1)
    definition = ticking(
        "nightly", "* * * * * */4", SLOW, schedule={"paused": True, "overlap": "skip"}
    )
    await tenant.apply(definition)
    # Eight 4-second intervals of the cron.
    body = {
        "start": "2025-01-01T00:00:00+00:00",
        "end": "2025-01-01T00:00:32+00:00",
        "max_concurrency": 8,
    }
    response = await tenant.http.post("/v1/pipelines/nightly/backfills", json=body)
    assert response.status_code == 201, response.text
    backfill = response.json()["backfill_id"]

    def queued_backfill_runs() -> bool:
        runs = runs_in_db(service, tenant.name, "nightly")
        return sum(1 for r in runs if r.submitted_at is None) >= 4

    await wait_for(queued_backfill_runs, "backfill runs waiting in the tenant's queue", 60)
    response = await tenant.http.post("/v1/pipelines/nightly/schedule/unpause")
    assert response.status_code == 200, response.text

    def scheduled_run_started() -> Run | None:
        for run in runs_in_db(service, tenant.name, "nightly"):
            if run.trigger == "schedule" and run.submitted_at is not None:
                return run
        return None

    scheduled = await wait_for(scheduled_run_started, "the scheduled run to start", 60)
    await pause(tenant, "nightly")
    backfill_runs = [
        r for r in runs_in_db(service, tenant.name, "nightly") if r.trigger == "backfill"
    ]
    # Backfill runs already waiting when the scheduled run was queued...
    overtaken = [
        r
        for r in backfill_runs
        if r.created_at < scheduled.created_at
        and (r.submitted_at is None or r.submitted_at > scheduled.created_at)
    ]
    assert overtaken, "no backfill run was waiting: the test proved nothing"
    # ...all start after it: the on-time run took the next free slot.
    for run in overtaken:
        assert run.submitted_at is None or run.submitted_at >= scheduled.submitted_at, run
    assert scheduled.priority > max(r.priority for r in backfill_runs)
    # The order is proven: the backfill's remaining runs may now run side by side (one at a
    # time, its eight 2-second python runs took most of this test: past 120 s under load).
    await set_quota(service, tenant, max_concurrent_runs=None)

    done = await wait_state(tenant, backfill, {"COMPLETED"}, timeout=120)
    assert done["counts"]["succeeded"] == 8, done
    with service.sessions() as session:
        events = session.scalars(
            select(OutboxEvent).where(OutboxEvent.key == backfill).order_by(OutboxEvent.seq)
        ).all()
        kinds = [(e.type, e.actor, e.payload["pipeline"], e.payload["status"]) for e in events]
    assert [k[0] for k in kinds] == ["BACKFILL_STARTED", "BACKFILL_COMPLETED"], kinds
    assert {k[1] for k in kinds} == {"backfill"} and {k[2] for k in kinds} == {"nightly"}
