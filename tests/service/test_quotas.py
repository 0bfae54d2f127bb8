"""Quotas through the API with the real dispatcher and worker: concurrency limits with the
three overflow policies, priority order of the queue, step-type and size limits."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from temporalio.client import Client

from pipeline_service.db.models import Run
from pipeline_service.db.tenants import get_tenant
from pipeline_service.launcher import LaunchRequest, Priority, launch_run
from pipeline_service.reconciler import RunReconciler
from schemas.recording import RecordedRunStatus
from schemas.run import Trigger
from tests.service.conftest import ADMIN_KEY, EXAMPLES, Service, Tenant
from tests.service.test_runs import wait_finished

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def pausing(name: str, seconds: float = 1.0) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"id": "hold", "type": "python", "script": "scripts/pause.py", "args": [str(seconds)]}
        ],
    }


async def set_quota(service: Service, tenant: Tenant, **quota: Any) -> dict[str, Any]:
    response = await service.http.put(f"/v1/tenants/{tenant.name}/quota", json=quota, headers=ADMIN)
    assert response.status_code == 200, response.text
    return dict(response.json())


def running_now(service: Service, tenant: Tenant) -> int:
    with service.sessions() as session:
        found = get_tenant(session, tenant.name)
        assert found is not None
        return (
            session.scalar(
                select(func.count())
                .select_from(Run)
                .where(Run.tenant_id == found.id, Run.status == RecordedRunStatus.RUNNING.value)
            )
            or 0
        )


async def test_twenty_triggers_with_a_quota_of_three_never_run_more_than_three(
    service: Service,
) -> None:
    tenant = await service.tenant()
    # Long enough that the first runs are still holding when the 20th trigger returns, also
    # on a loaded machine (with 0.5 s, runs ended and waiting ones started during the loop).
    await tenant.apply(pausing("hold", 3.0))
    quota = await set_quota(service, tenant, max_concurrent_runs=3)
    assert quota["overflow_policy"] == "queue"
    ids = []
    for _ in range(20):
        response = await tenant.http.post("/v1/pipelines/hold/runs", json={})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    waiting = (await tenant.http.get("/v1/quota")).json()
    assert waiting["active_runs"] == 3 and waiting["waiting_runs"] == 17, waiting
    peak = 0
    deadline = time.monotonic() + 120
    while True:
        runs = [(await tenant.http.get(f"/v1/runs/{run_id}")).json() for run_id in ids]
        # In a thread: a blocked event loop would keep the API's sessions (and SQLite) locked.
        sampled = await asyncio.to_thread(running_now, service, tenant)
        assert sampled <= 3, sampled
        peak = max(peak, sampled)
        if all(r["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") for r in runs):
            break
        assert time.monotonic() < deadline, runs
        await asyncio.sleep(0.05)
    assert [r["status"] for r in runs] == ["SUCCEEDED"] * 20
    assert peak == 3
    # The queue is first in, first out at equal priority (slots are given in that order;
    # workflows given slots in one pass may record their starts in any order).
    with service.sessions() as session:
        given = dict(
            session.execute(select(Run.public_id, Run.submitted_at).where(Run.public_id.in_(ids)))
            .tuples()
            .all()
        )
    assert [given[i] for i in ids] == sorted(given[i] for i in ids)


async def test_reject_answers_429_with_retry_after_and_records_nothing(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(pausing("hold", 1.5))
    await set_quota(
        service, tenant, max_concurrent_runs=1, overflow_policy="reject", retry_after_seconds=7
    )
    first = await tenant.http.post("/v1/pipelines/hold/runs", json={})
    assert first.status_code == 201, first.text
    second = await tenant.http.post("/v1/pipelines/hold/runs", json={})
    assert second.status_code == 429, second.text
    assert second.headers["Retry-After"] == "7"
    assert "overflow policy reject" in second.json()["detail"]
    listed = (await tenant.http.get("/v1/runs")).json()["items"]
    assert [r["id"] for r in listed] == [first.json()["id"]]
    assert (await wait_finished(tenant, first.json()["id"]))["status"] == "SUCCEEDED"
    third = await tenant.http.post("/v1/pipelines/hold/runs", json={})
    assert third.status_code == 201, third.text


async def test_drop_oldest_cancels_the_oldest_waiting_run_with_the_reason(
    service: Service,
) -> None:
    tenant = await service.tenant()
    await tenant.apply(pausing("hold", 1.5))
    await set_quota(
        service, tenant, max_concurrent_runs=1, max_queued_runs=1, overflow_policy="drop_oldest"
    )
    runs = []
    for _ in range(3):
        response = await tenant.http.post("/v1/pipelines/hold/runs", json={})
        assert response.status_code == 201, response.text
        runs.append(response.json())
    assert [r["waiting"] for r in runs] == [False, True, True]
    dropped = (await tenant.http.get(f"/v1/runs/{runs[1]['id']}")).json()
    assert dropped["status"] == "CANCELLED", dropped
    assert "drop_oldest" in dropped["error"] and runs[2]["id"] in dropped["error"]
    events = (await tenant.http.get(f"/v1/runs/{runs[1]['id']}/events")).json()
    assert [e["type"] for e in events][-1].endswith("PIPELINE_CANCELLED"), events
    for run in (runs[0], runs[2]):
        assert (await wait_finished(tenant, run["id"]))["status"] == "SUCCEEDED"


async def test_queue_with_a_depth_limit_refuses_beyond_it(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(pausing("hold", 1.0))
    await set_quota(service, tenant, max_concurrent_runs=1, max_queued_runs=1)
    codes = [
        (await tenant.http.post("/v1/pipelines/hold/runs", json={})).status_code for _ in range(3)
    ]
    assert codes == [201, 201, 429]


async def test_waiting_runs_start_by_priority_then_age(service: Service) -> None:
    """Scheduled (on time) before manual before backfill, whatever the arrival order."""
    tenant = await service.tenant()
    await tenant.apply(pausing("hold", 0.2))
    await set_quota(service, tenant, max_concurrent_runs=1)
    with service.sessions() as session:
        row = get_tenant(session, tenant.name)
    assert row is not None
    temporal = await service.app.state.services.temporal_client()
    order = [Priority.BACKFILL, Priority.MANUAL, Priority.SCHEDULED, Priority.BACKFILL]
    launches = []
    # The first run takes the slot; the others wait and start one at a time.
    for index, priority in enumerate([Priority.MANUAL, *order]):
        launches.append(
            await launch_run(
                service.sessions,
                temporal,
                LaunchRequest(
                    tenant=row,
                    pipeline="hold",
                    actor="test",
                    idempotency_key=f"p{index}",
                    priority=priority,
                ),
                task_queue=service.settings.task_queue,
                source_dir=EXAMPLES,
            )
        )
    assert [launch.waiting for launch in launches] == [False, True, True, True, True]
    finished = [await wait_finished(tenant, launch.run.public_id) for launch in launches]
    by_start = sorted(finished[1:], key=lambda r: r["started_at"])
    assert [r["priority"] for r in by_start] == [10, 0, -10, -10]
    backfills = [r for r in finished[1:] if r["priority"] == -10]
    assert by_start[2:] == backfills  # equal priority: oldest first


async def test_a_waiting_run_can_be_cancelled_and_never_starts(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(pausing("hold", 1.0))
    await set_quota(service, tenant, max_concurrent_runs=1)
    first = (await tenant.http.post("/v1/pipelines/hold/runs", json={})).json()
    second = (await tenant.http.post("/v1/pipelines/hold/runs", json={})).json()
    assert second["waiting"]
    cancelled = await tenant.http.post(f"/v1/runs/{second['id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "CANCELLED"
    assert (await wait_finished(tenant, first["id"]))["status"] == "SUCCEEDED"
    await asyncio.sleep(1)
    again = (await tenant.http.get(f"/v1/runs/{second['id']}")).json()
    assert again["status"] == "CANCELLED" and again["started_at"] is None


async def test_step_type_and_size_limits_refuse_the_trigger(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(pausing("hold", 0.1))
    await tenant.apply(
        {"name": "joins", "steps": [{"id": f"s{i}", "type": "noop"} for i in range(3)]}
    )
    await set_quota(service, tenant, allowed_step_types=["noop", "sql"], max_steps_per_pipeline=2)
    refused = await tenant.http.post("/v1/pipelines/hold/runs", json={})
    assert refused.status_code == 403, refused.text
    assert "steps[0].type: 'python' is not allowed" in refused.json()["detail"]
    too_big = await tenant.http.post("/v1/pipelines/joins/runs", json={})
    assert too_big.status_code == 403 and "3 steps" in too_big.json()["detail"], too_big.text
    assert (await tenant.http.get("/v1/runs")).json()["items"] == []
    # Storing such a definition is refused too (a new pipeline, or a new version).
    stored = await tenant.http.post("/v1/pipelines", json={"definition": pausing("other")})
    assert stored.status_code == 403 and "'python' is not allowed" in stored.text, stored.text
    changed = await tenant.http.put("/v1/pipelines/hold", json={"definition": pausing("hold", 2)})
    assert changed.status_code == 403, changed.text


async def test_quotas_are_set_by_the_platform_admin_and_read_by_the_tenant(
    service: Service,
) -> None:
    tenant = await service.tenant(scope="admin")
    other = await service.tenant()
    unlimited = (await tenant.http.get("/v1/quota")).json()
    assert unlimited["max_concurrent_runs"] is None and unlimited["active_runs"] == 0
    own = await tenant.http.put(f"/v1/tenants/{tenant.name}/quota", json={"max_concurrent_runs": 9})
    assert own.status_code == 403, own.text
    await set_quota(service, tenant, max_concurrent_runs=2, overflow_policy="reject")
    seen = (await tenant.http.get("/v1/quota")).json()
    assert seen["tenant"] == tenant.name and seen["max_concurrent_runs"] == 2
    assert (await other.http.get("/v1/quota")).json()["max_concurrent_runs"] is None
    bad = await service.http.put(
        f"/v1/tenants/{tenant.name}/quota", json={"allowed_step_types": ["sqll"]}, headers=ADMIN
    )
    assert bad.status_code == 422 and "sqll" in bad.json()["detail"], bad.text
    missing = await service.http.put("/v1/tenants/nope/quota", json={}, headers=ADMIN)
    assert missing.status_code == 404


async def test_one_logical_date_from_every_entry_point_is_one_run(service: Service) -> None:
    """The API twice (different idempotency keys) and the launcher directly (as schedules and
    backfills call it): one run, also under a full quota."""
    tenant = await service.tenant()
    await tenant.apply(pausing("hold", 0.2))
    await set_quota(service, tenant, max_concurrent_runs=1, overflow_policy="reject")
    date = "2026-03-01T00:00:00Z"
    first = await tenant.http.post(
        "/v1/pipelines/hold/runs", json={"logical_date": date}, headers={"Idempotency-Key": "a"}
    )
    second = await tenant.http.post(
        "/v1/pipelines/hold/runs", json={"logical_date": date}, headers={"Idempotency-Key": "b"}
    )
    assert (first.status_code, second.status_code) == (201, 200), second.text
    assert first.json()["id"] == second.json()["id"]
    with service.sessions() as session:
        row = get_tenant(session, tenant.name)
    assert row is not None
    launch = await launch_run(
        service.sessions,
        await service.app.state.services.temporal_client(),
        LaunchRequest(
            tenant=row,
            pipeline="hold",
            actor="scheduler",
            logical_date=datetime(2026, 3, 1, tzinfo=UTC),
            trigger=Trigger.SCHEDULE,
            priority=Priority.SCHEDULED,
        ),
        task_queue=service.settings.task_queue,
        source_dir=EXAMPLES,
    )
    assert not launch.created and launch.run.public_id == first.json()["id"]
    assert len((await tenant.http.get("/v1/runs")).json()["items"]) == 1


async def test_a_terminated_run_gives_its_slot_back(service: Service, client: Client) -> None:
    """A workflow terminated from outside never records its end: the reconciler notices it
    (Temporal says TERMINATED), records the run FAILED with the reason, and the waiting run
    starts."""
    tenant = await service.tenant()
    await tenant.apply(pausing("hold", 30))
    await tenant.apply(pausing("quick", 0.1))
    await set_quota(service, tenant, max_concurrent_runs=1)
    stuck = (await tenant.http.post("/v1/pipelines/hold/runs", json={})).json()
    waiting = (await tenant.http.post("/v1/pipelines/quick/runs", json={})).json()
    assert waiting["waiting"], waiting
    await client.get_workflow_handle(stuck["workflow_id"]).terminate("operator")
    # What every `laminar worker` does every LAMINAR_RECONCILE_INTERVAL.
    reconciler = RunReconciler(service.sessions, client, older_than=timedelta(0))
    deadline = time.monotonic() + 30
    while not await reconciler.reconcile_once():  # visibility may lag the terminate a moment
        assert time.monotonic() < deadline, "the terminated run was never reconciled"
        await asyncio.sleep(0.2)
    ended = await wait_finished(tenant, stuck["id"], 30)
    assert ended["status"] == "FAILED" and "terminated" in ended["error"], ended
    assert (await wait_finished(tenant, waiting["id"], 30))["status"] == "SUCCEEDED"
