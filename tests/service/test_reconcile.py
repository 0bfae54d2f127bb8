"""Runs that Temporal ended on its own (terminate, execution timeout) are reconciled: the API
shows how they ended, with one end event, however often the reconciler passes."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from temporalio.client import Client

from pipeline_service.reconciler import RunReconciler
from tests.service.conftest import Service, Tenant
from tests.service.test_runs import SLOW_SQL

END_EVENTS = {"PIPELINE_SUCCEEDED", "PIPELINE_FAILED", "PIPELINE_CANCELLED"}


def _slow(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        **extra,
        "steps": [
            {"id": "slow", "type": "sql", "sql": SLOW_SQL, "timeout": "30s"},
            {"id": "after", "type": "noop", "depends_on": ["slow"]},
        ],
    }


async def _running(tenant: Tenant, name: str) -> dict[str, Any]:
    run_id = (await tenant.http.post(f"/v1/pipelines/{name}/runs", json={})).json()["id"]
    deadline = time.monotonic() + 30
    while True:
        run = (await tenant.http.get(f"/v1/runs/{run_id}")).json()
        if run["steps"][0]["status"] == "RUNNING":
            return dict(run)
        assert time.monotonic() < deadline, run
        await asyncio.sleep(0.1)


async def _reconciled(service: Service, client: Client, tenant: Tenant, run_id: str) -> Any:
    # Two at once, as two workers would: the run still ends once.
    reconciler = RunReconciler(service.sessions, client, older_than=timedelta(0))
    other = RunReconciler(service.sessions, client, older_than=timedelta(0))
    deadline = time.monotonic() + 30
    while (await tenant.http.get(f"/v1/runs/{run_id}")).json()["status"] == "RUNNING":
        assert time.monotonic() < deadline
        # Visibility may lag the terminate by a moment: try again.
        await asyncio.gather(reconciler.reconcile_once(), other.reconcile_once())
        await asyncio.sleep(0.2)
    # Again: nothing more is written.
    await reconciler.reconcile_once()
    events = (await tenant.http.get(f"/v1/runs/{run_id}/events")).json()
    return (await tenant.http.get(f"/v1/runs/{run_id}")).json(), events


async def test_a_run_terminated_in_temporal_is_recorded_failed_with_the_reason(
    service: Service, client: Client
) -> None:
    tenant = await service.tenant()
    await tenant.apply(_slow("terminated"))
    run = await _running(tenant, "terminated")
    # Before the reconciler: the database still says RUNNING after Temporal ended it.
    await client.get_workflow_handle(run["workflow_id"]).terminate(reason="stuck, stopped by ops")
    await asyncio.sleep(0.5)
    assert (await tenant.http.get(f"/v1/runs/{run['id']}")).json()["status"] == "RUNNING"

    run, events = await _reconciled(service, client, tenant, run["id"])
    assert run["status"] == "FAILED", run
    assert "stuck, stopped by ops" in run["error"] and "terminated" in run["error"]
    steps = {s["step_id"]: s["status"] for s in run["steps"]}
    assert steps == {"slow": "CANCELLED", "after": "PENDING"}, steps
    ends = [e for e in events if e["type"] in END_EVENTS]
    assert len(ends) == 1 and ends[0]["type"] == "PIPELINE_FAILED", events
    assert "stuck, stopped by ops" in ends[0]["data"]["error"]
    assert [e["type"] for e in events][-2:] == ["PIPELINE_STEP_CANCELLED", "PIPELINE_FAILED"]


async def test_a_run_past_its_execution_timeout_is_recorded_failed(
    service: Service, client: Client
) -> None:
    tenant = await service.tenant()
    await tenant.apply(_slow("timed", timeout="3s"))
    run = await _running(tenant, "timed")
    run, events = await _reconciled(service, client, tenant, run["id"])
    assert run["status"] == "FAILED", run
    assert "timed out after 0:00:03" in run["error"], run["error"]
    assert len([e for e in events if e["type"] in END_EVENTS]) == 1, events


async def test_the_reconciler_leaves_running_and_finished_runs_alone(
    service: Service, client: Client
) -> None:
    tenant = await service.tenant()
    await tenant.apply(_slow("alive"))
    run = await _running(tenant, "alive")
    reconciler = RunReconciler(service.sessions, client, older_than=timedelta(0))
    await reconciler.reconcile_once()
    assert (await tenant.http.get(f"/v1/runs/{run['id']}")).json()["status"] == "RUNNING"
    await tenant.http.post(f"/v1/runs/{run['id']}/cancel")
    deadline = time.monotonic() + 30
    while (await tenant.http.get(f"/v1/runs/{run['id']}")).json()["status"] != "CANCELLED":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    before = (await tenant.http.get(f"/v1/runs/{run['id']}/events")).json()
    await reconciler.reconcile_once()
    after = (await tenant.http.get(f"/v1/runs/{run['id']}/events")).json()
    assert after == before
