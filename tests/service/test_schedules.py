"""Schedules end to end on the dev server: a schedule firing every 2 s starts runs through the
launcher with the right logical dates and data intervals; preview; pause/unpause with catchup;
changing the schedule never re-runs an interval; overlap policies; removing it stops it."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from pipeline_service.db.pipelines import create_pipeline
from pipeline_service.db.tenants import get_tenant
from pipeline_service.scheduling.sync import sync_schedule
from pipeline_service.temporal.worker import build_worker
from tests.service.conftest import EXAMPLES, Service, Tenant
from workflows.schedule import scheduler_workflow_id

TICK = timedelta(seconds=2)


def ticker(name: str, **schedule: Any) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": {"cron": "* * * * * */2", "timezone": "Europe/Berlin", **schedule},
        "steps": [{"id": "a", "type": "noop"}],
    }


async def runs_of(tenant: Tenant, pipeline: str) -> list[dict[str, Any]]:
    response = await tenant.http.get("/v1/runs", params={"pipeline": pipeline, "limit": 200})
    assert response.status_code == 200, response.text
    return sorted(response.json()["items"], key=lambda r: r["logical_date"])


async def wait_runs(tenant: Tenant, pipeline: str, count: int, timeout: float = 40) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = await runs_of(tenant, pipeline)
        if len(runs) >= count:
            return runs
        await asyncio.sleep(0.3)
    raise AssertionError(f"{pipeline}: {len(runs)} runs after {timeout} s, expected {count}")


def dates(runs: list[dict[str, Any]]) -> list[datetime]:
    return [datetime.fromisoformat(r["logical_date"]) for r in runs]


async def started_context(client: Client, workflow_id: str) -> dict[str, Any]:
    """The run context the run's workflow was started with (from its history)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    return dict(json.loads(started.input.payloads[0].data)["context"])


async def test_a_schedule_fires_runs_for_consecutive_intervals(
    service: Service, client: Client
) -> None:
    tenant = await service.tenant()
    await tenant.apply(ticker("ticker", catchup=True, overlap="allow_all"))
    runs = await wait_runs(tenant, "ticker", 3)
    assert {r["trigger"] for r in runs} == {"schedule"}
    assert {r["actor"] for r in runs} == {"schedule"}
    logical = dates(runs)
    assert all(b - a == TICK for a, b in itertools.pairwise(logical)), logical
    for run, date in zip(runs, logical, strict=True):
        assert run["workflow_id"] == f"{tenant.name}/ticker/{date.isoformat()}"
    context = await started_context(client, runs[0]["workflow_id"])
    start = datetime.fromisoformat(context["data_interval_start"])
    end = datetime.fromisoformat(context["data_interval_end"])
    assert (start, end - start, context["trigger"]) == (logical[0], TICK, "schedule")
    first, first_date = runs[0], logical[0]

    response = await tenant.http.get("/v1/pipelines/ticker/schedule", params={"count": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["running"] and not body["paused"] and body["timezone"] == "Europe/Berlin"
    fires = [datetime.fromisoformat(f) for f in body["next_fires"]]
    assert len(fires) == 5
    assert {b - a for a, b in itertools.pairwise(fires)} == {TICK}
    assert {f.utcoffset() for f in fires} <= {timedelta(hours=1), timedelta(hours=2)}
    assert datetime.fromisoformat(body["last_handled"]) >= logical[-1] + TICK

    # Paused: nothing fires. Unpaused with catchup: the missed intervals run, none lost.
    response = await tenant.http.post("/v1/pipelines/ticker/schedule/pause")
    assert response.status_code == 200 and response.json()["paused"], response.text
    await asyncio.sleep(1)
    before = len(await runs_of(tenant, "ticker"))
    await asyncio.sleep(5)
    assert len(await runs_of(tenant, "ticker")) == before
    response = await tenant.http.post("/v1/pipelines/ticker/schedule/unpause")
    assert response.status_code == 200 and not response.json()["paused"], response.text
    runs = await wait_runs(tenant, "ticker", before + 3)
    logical = dates(runs)
    assert all(b - a == TICK for a, b in itertools.pairwise(logical)), logical

    # A new schedule (every 3 s, no catchup) never fires an interval that already ran.
    handled = datetime.fromisoformat(
        (await tenant.http.get("/v1/pipelines/ticker/schedule")).json()["last_handled"]
    )
    changed = ticker("ticker", overlap="allow_all")
    changed["schedule"]["cron"] = "* * * * * */3"
    response = await tenant.http.put("/v1/pipelines/ticker", json={"definition": changed})
    assert response.status_code == 200, response.text
    known = {r["workflow_id"] for r in await runs_of(tenant, "ticker")}
    runs = await wait_runs(tenant, "ticker", len(known) + 2)
    new = [r for r in runs if r["workflow_id"] not in known]
    every_3s = timedelta(seconds=3)
    assert new and all(datetime.fromisoformat(r["logical_date"]) + every_3s > handled for r in new)
    assert len({r["logical_date"] for r in runs}) == len(runs)

    # By hand, a date that has a scheduled run is refused unless rerun.
    manual = {"logical_date": first_date.isoformat()}
    response = await tenant.http.post("/v1/pipelines/ticker/runs", json=manual)
    assert response.status_code == 409, response.text
    assert "already has a schedule run" in response.json()["detail"]
    response = await tenant.http.post("/v1/pipelines/ticker/runs", json={**manual, "rerun": True})
    assert response.status_code == 201, response.text
    rerun = response.json()
    assert rerun["workflow_id"].startswith(first["workflow_id"] + "/rerun:")
    assert (rerun["trigger"], rerun["retry_of"]) == ("manual", first["id"])
    assert datetime.fromisoformat(rerun["logical_date"]) == first_date

    # Without a schedule the scheduler ends.
    plain = {"name": "ticker", "steps": [{"id": "a", "type": "noop"}]}
    response = await tenant.http.put("/v1/pipelines/ticker", json={"definition": plain})
    assert response.status_code == 200, response.text
    handle = client.get_workflow_handle(scheduler_workflow_id(tenant.name, "ticker"))
    await asyncio.wait_for(handle.result(), timeout=20)
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    response = await tenant.http.get("/v1/pipelines/ticker/schedule")
    assert response.status_code == 404, response.text


ACTIVE = {"QUEUED", "RUNNING", "RETRYING"}


def slow(name: str, overlap: str) -> dict[str, Any]:
    definition = ticker(name, overlap=overlap, catchup=True)
    definition["steps"] = [
        {"id": "work", "type": "python", "script": "scripts/wait_seconds.py", "args": ["3.5"]}
    ]
    return definition


@pytest.mark.slow
async def test_overlap_policies(service: Service, client: Client) -> None:
    """A 2 s schedule of ~4 s runs: skip and buffer_one/buffer_all never run two at once
    (sampled); skip and buffer_one drop intervals, buffer_all keeps every one in order;
    cancel_other cancels the running one."""
    tenant = await service.tenant()
    policies = ["skip", "buffer_one", "buffer_all", "cancel_other"]
    for policy in policies:
        await tenant.apply(slow(policy.replace("_", "-"), policy))
    peak = dict.fromkeys(policies, 0)
    deadline = time.monotonic() + 16
    while time.monotonic() < deadline:
        for policy in policies:
            runs = await runs_of(tenant, policy.replace("_", "-"))
            peak[policy] = max(peak[policy], sum(r["status"] in ACTIVE for r in runs))
        await asyncio.sleep(0.25)
    for policy in policies:  # stop firing before looking at the result
        await tenant.http.post(f"/v1/pipelines/{policy.replace('_', '-')}/schedule/pause")
    assert peak["skip"] == peak["buffer_one"] == peak["buffer_all"] == 1, peak
    result = {p: await runs_of(tenant, p.replace("_", "-")) for p in policies}
    for policy in ("skip", "buffer_one"):
        gaps = [b - a for a, b in itertools.pairwise(dates(result[policy]))]
        assert len(result[policy]) >= 2 and max(gaps) > TICK, (policy, gaps)
    # buffer_all: every interval since the first, in order, none dropped.
    gaps = {b - a for a, b in itertools.pairwise(dates(result["buffer_all"]))}
    assert len(result["buffer_all"]) >= 2 and gaps == {TICK}, gaps
    state = (await tenant.http.get("/v1/pipelines/buffer-all/schedule")).json()
    assert state["buffered"], state  # fires keep coming faster than runs end
    assert {r["status"] for r in result["cancel_other"]} >= {"CANCELLED"}
    skip_state = (await tenant.http.get("/v1/pipelines/skip/schedule")).json()
    assert any(line.endswith("skipped") for line in skip_state["recent"]), skip_state


@pytest.mark.slow
async def test_catchup_after_the_worker_was_down(service: Service, client: Client) -> None:
    """The scheduler's worker stops for ~6 s: with catchup every missed interval runs when it
    is back; without, only the latest one."""
    tenant = await service.tenant()
    queue = f"schedules-{uuid.uuid4()}"
    with service.sessions() as session:
        tenant_row = get_tenant(session, tenant.name)
        assert tenant_row is not None
        # buffer_all: catch-up runs start one after the other (skip would drop some).
        for name, catchup in (("with-catchup", True), ("latest-only", False)):
            definition = ticker(name, catchup=catchup, overlap="buffer_all")
            create_pipeline(session, tenant_row.id, name, definition, actor="test")
        session.commit()

    def worker() -> Worker:
        return build_worker(
            client,
            task_queue=queue,
            engine=service.warehouse,
            work_root=service.settings.work_dir,
            sessions=service.sessions,
            source_dir=EXAMPLES,
        )

    async with worker():
        for name in ("with-catchup", "latest-only"):
            await sync_schedule(client, tenant.name, name, task_queue=queue)
        await wait_runs(tenant, "with-catchup", 2)
        await wait_runs(tenant, "latest-only", 2)
    down = {n: len(await runs_of(tenant, n)) for n in ("with-catchup", "latest-only")}
    await asyncio.sleep(6)  # ~3 intervals end while no worker runs the scheduler
    assert {n: len(await runs_of(tenant, n)) for n in down} == down
    async with worker():
        await wait_runs(tenant, "with-catchup", down["with-catchup"] + 4)
        await wait_runs(tenant, "latest-only", down["latest-only"] + 2)
        for name in down:
            await client.get_workflow_handle(scheduler_workflow_id(tenant.name, name)).terminate()
    gaps = [b - a for a, b in itertools.pairwise(dates(await runs_of(tenant, "with-catchup")))]
    assert set(gaps) == {TICK}, gaps
    gaps = [b - a for a, b in itertools.pairwise(dates(await runs_of(tenant, "latest-only")))]
    assert max(gaps) >= 3 * TICK, gaps
