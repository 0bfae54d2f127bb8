"""Pools through the API with the real workflow, worker and database: a global pool of 2
shared by three pipelines of two tenants never has more than 2 of its steps running (measured
by the steps themselves); tenant pools win over global ones; undefined pools are refused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import func, select

from pipeline_service.db.models import PoolLease
from tests.service.conftest import ADMIN_KEY, Service
from tests.service.test_runs import wait_finished

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def pooled(name: str, pool: str, seconds: float = 0.6) -> dict[str, Any]:
    hold = {"type": "python", "script": "scripts/pause.py", "args": [str(seconds)], "pool": pool}
    return {
        "name": name,
        "steps": [
            {"id": "first", **hold},
            {"id": "second", **hold},
            {"id": "after", "type": "noop", "depends_on": ["first", "second"]},
        ],
    }


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = current = 0
    for _, change in edges:  # an end sorts before a start at the same instant
        current += change
        peak = max(peak, current)
    return peak


async def test_a_pool_of_two_shared_by_three_pipelines_of_two_tenants(service: Service) -> None:
    pool = f"engine-{time.monotonic_ns() % 10**9}"
    put = await service.http.put(f"/v1/pools/{pool}", json={"slots": 2}, headers=ADMIN)
    assert put.status_code == 200 and put.json()["scope"] == "global", put.text
    first, second = await service.tenant(), await service.tenant()
    await first.apply(pooled("p1", pool))
    await first.apply(pooled("p2", pool))
    await second.apply(pooled("p3", pool))
    started = []
    for tenant, name in [(first, "p1"), (first, "p2"), (second, "p3")] * 2:
        response = await tenant.http.post(f"/v1/pipelines/{name}/runs", json={})
        assert response.status_code == 201, response.text
        started.append((tenant, response.json()["id"]))
    leases = []
    pending = [asyncio.ensure_future(wait_finished(t, run_id, 180)) for t, run_id in started]

    def held() -> int:
        with service.sessions() as session:
            return session.scalar(select(func.count()).select_from(PoolLease)) or 0

    # Database reads in a thread: a blocked event loop would keep the API's sessions open.
    while not all(task.done() for task in pending):
        leases.append(await asyncio.to_thread(held))
        shown = (await first.http.get("/v1/pools")).json()
        assert next(p["in_use"] for p in shown if p["name"] == pool) <= 2, shown
        await asyncio.sleep(0.05)
    runs = [task.result() for task in pending]
    assert [r["status"] for r in runs] == ["SUCCEEDED"] * 6, runs
    intervals = [
        (a["outputs"]["started"], a["outputs"]["ended"])
        for run in runs
        for step in run["steps"]
        if step["step_id"] != "after"
        for a in step["attempts"]
    ]
    assert len(intervals) == 12
    assert max_overlap(intervals) == 2, sorted(intervals)
    assert max(leases) <= 2
    assert await asyncio.to_thread(held) == 0  # every slot given back


async def test_a_tenant_pool_wins_and_undefined_pools_are_refused(service: Service) -> None:
    tenant = await service.tenant()
    pool = f"solo-{time.monotonic_ns() % 10**9}"
    await tenant.apply(pooled("mine", pool, 0.3))
    refused = await tenant.http.post("/v1/pipelines/mine/runs", json={})
    assert refused.status_code == 422, refused.text
    assert f"steps[0].pool: pool '{pool}' is not defined" in refused.json()["detail"]
    assert (
        await service.http.put(f"/v1/pools/{pool}", json={"slots": 5}, headers=ADMIN)
    ).is_success
    own = await service.http.put(
        f"/v1/tenants/{tenant.name}/pools/{pool}", json={"slots": 1}, headers=ADMIN
    )
    assert own.status_code == 200 and own.json()["scope"] == "tenant", own.text
    listed = {
        (p["name"], p["scope"]): p["slots"] for p in (await tenant.http.get("/v1/pools")).json()
    }
    assert listed[(pool, "tenant")] == 1 and listed[(pool, "global")] == 5
    run = (await tenant.http.post("/v1/pipelines/mine/runs", json={})).json()
    done = await wait_finished(tenant, run["id"])
    assert done["status"] == "SUCCEEDED", done
    (a,), (b,) = [s["attempts"] for s in done["steps"][:2]]
    first, second = sorted([a["outputs"], b["outputs"]], key=lambda o: o["started"])
    assert first["ended"] <= second["started"]  # the tenant's pool of 1: one after the other
    denied = await tenant.http.put(f"/v1/pools/{pool}", json={"slots": 9})
    assert denied.status_code == 403
    other = await service.tenant()
    assert (pool, "tenant") not in {
        (p["name"], p["scope"]) for p in (await other.http.get("/v1/pools")).json()
    }


async def test_a_waiting_step_shows_its_pool_and_place_and_goes_in_order(
    service: Service,
) -> None:
    """A pool of 1: run A holds it; B asks, then C: the API shows both waiting (B first in
    line, C second); B's step starts before C's, whichever of them asks first after A."""
    tenant = await service.tenant()
    pool = f"line-{time.monotonic_ns() % 10**9}"
    own = await service.http.put(
        f"/v1/tenants/{tenant.name}/pools/{pool}", json={"slots": 1}, headers=ADMIN
    )
    assert own.is_success, own.text
    hold = {"type": "python", "script": "scripts/pause.py", "args": ["2"], "pool": pool}
    await tenant.apply({"name": "line", "steps": [{"id": "hold", **hold}]})
    ids = []

    async def waiting(run_id: str) -> dict[str, Any] | None:
        run = (await tenant.http.get(f"/v1/runs/{run_id}")).json()
        [step] = run["steps"]
        return step["waiting_for_pool"]  # type: ignore[no-any-return]

    async def trigger(key: str) -> str:
        response = await tenant.http.post(
            "/v1/pipelines/line/runs", json={}, headers={"Idempotency-Key": key}
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
        return str(response.json()["id"])

    first = await trigger(f"a-{pool}")
    deadline = time.monotonic() + 60
    while (await tenant.http.get(f"/v1/runs/{first}")).json()["steps"][0]["status"] != "RUNNING":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    seen: dict[str, dict[str, Any]] = {}
    for key in ("b", "c"):
        run_id = await trigger(f"{key}-{pool}")
        while True:
            wait = await waiting(run_id)
            if wait is not None:
                seen[key] = wait
                break
            assert time.monotonic() < deadline, "the step never showed as waiting"
            await asyncio.sleep(0.05)
    assert seen["b"]["pool"] == pool and seen["b"]["position"] == 1, seen
    assert seen["c"]["position"] == 2, seen
    runs = [await wait_finished(tenant, run_id, 120) for run_id in ids]
    assert [r["status"] for r in runs] == ["SUCCEEDED"] * 3, runs
    started = [r["steps"][0]["attempts"][-1]["outputs"]["started"] for r in runs]
    assert started == sorted(started), started  # A, then B, then C
    assert all(r["steps"][0]["waiting_for_pool"] is None for r in runs)
