"""Dependencies between pipelines on the dev server: a cycle is refused naming it; fan-in with
out-of-order, cancelled and retried upstream runs starts the downstream run once; a daily run
waits for all 25 hourly runs of a fall-back day; a wait timeout fails the run naming what is
missing."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.service.conftest import Tenant

SLOW = [{"id": "w", "type": "python", "script": "scripts/wait_seconds.py", "args": ["3"]}]


def pipeline(
    name: str, *upstreams: str, cron: str = "@daily", steps: Any = None, timeout: str = "1h"
) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": {"cron": cron, "timezone": "Europe/Berlin", "paused": True},
        "depends_on": [{"pipeline": u, "timeout": timeout} for u in upstreams],
        "steps": steps or [{"id": "a", "type": "noop"}],
    }


async def trigger(tenant: Tenant, name: str, date: datetime) -> dict[str, Any]:
    body = {"logical_date": date.isoformat()}
    response = await tenant.http.post(f"/v1/pipelines/{name}/runs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def runs_of(tenant: Tenant, name: str) -> list[dict[str, Any]]:
    response = await tenant.http.get("/v1/runs", params={"pipeline": name, "limit": 200})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def wait_until(condition: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def finished(tenant: Tenant, run: dict[str, Any]) -> dict[str, Any]:
    async def done() -> Any:
        body = (await tenant.http.get(f"/v1/runs/{run['id']}")).json()
        return body if body["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    return dict(await wait_until(done, f"run {run['id']}"))


async def test_a_dependency_cycle_is_refused_naming_it(service: Any) -> None:
    tenant = await service.tenant()
    await tenant.apply(pipeline("a", "b"))
    await tenant.apply(pipeline("b", "c"))
    response = await tenant.http.post("/v1/pipelines", json={"definition": pipeline("c", "a")})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"path": "depends_on", "message": "cycle c -> a -> b -> c", "line": None, "column": None}
    ]
    response = await tenant.http.post("/v1/pipelines", json={"definition": pipeline("d", "d")})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["path"] == "depends_on"
    assert "cycle d -> d" in response.json()["errors"][0]["message"]


async def test_fan_in_with_out_of_order_and_retried_upstreams_starts_once(service: Any) -> None:
    tenant = await service.tenant()
    await tenant.apply(pipeline("orders", steps=SLOW))
    await tenant.apply(pipeline("customers"))
    await tenant.apply(pipeline("report", "orders", "customers"))
    day = datetime(2026, 1, 4, 23, tzinfo=UTC)  # 2026-01-05 in Berlin (a run waits for
    # its interval to end: these tests use past dates)
    # customers first; orders' first run is cancelled: the report waits.
    assert (await finished(tenant, await trigger(tenant, "customers", day)))[
        "status"
    ] == "SUCCEEDED"
    first = await trigger(tenant, "orders", day)
    await wait_until(
        lambda: _status_is(tenant, first["id"], "RUNNING"), "orders running", timeout=30
    )
    await tenant.http.post(f"/v1/runs/{first['id']}/cancel")
    assert (await finished(tenant, first))["status"] == "CANCELLED"
    await asyncio.sleep(2)
    assert await runs_of(tenant, "report") == []
    # Its retry succeeds: the report starts, once, for that date.
    retry = (await tenant.http.post(f"/v1/runs/{first['id']}/retry", json={})).json()
    assert (await finished(tenant, retry))["status"] == "SUCCEEDED"
    reports = await wait_until(lambda: runs_of(tenant, "report"), "the report run")
    assert len(reports) == 1
    report = await finished(tenant, reports[0])
    assert report["status"] == "SUCCEEDED" and report["trigger"] == "dependency"
    assert datetime.fromisoformat(report["logical_date"]) == day
    # orders run again for the date (a rerun): still one report run.
    response = await tenant.http.post(
        "/v1/pipelines/orders/runs", json={"logical_date": day.isoformat(), "rerun": True}
    )
    assert response.status_code == 201, response.text
    await finished(tenant, response.json())
    await asyncio.sleep(2)
    assert len(await runs_of(tenant, "report")) == 1


async def _status_is(tenant: Tenant, run_id: str, status: str) -> bool:
    return bool((await tenant.http.get(f"/v1/runs/{run_id}")).json()["status"] == status)


async def test_a_daily_run_waits_for_all_25_hourly_runs_of_a_fall_back_day(service: Any) -> None:
    """(2026-10-25, Berlin's last fall-back day before today: a run waits for its interval.)"""
    tenant = await service.tenant()
    await tenant.apply(pipeline("hourly", cron="@hourly"))
    await tenant.apply(pipeline("daily", "hourly"))
    day = datetime(2026, 10, 24, 22, tzinfo=UTC)  # 2026-10-25 00:00 CEST; 25 hours long
    hours = [day + timedelta(hours=h) for h in range(25)]
    last = hours.pop(7)
    runs = [await trigger(tenant, "hourly", h) for h in reversed(hours)]  # out of order
    for run in runs:
        assert (await finished(tenant, run))["status"] == "SUCCEEDED"
    await asyncio.sleep(2)
    assert await runs_of(tenant, "daily") == []  # 24 of 25 is not enough
    # An hourly run of the next day does not count either.
    await finished(tenant, await trigger(tenant, "hourly", day + timedelta(hours=25)))
    await finished(tenant, await trigger(tenant, "hourly", last))
    daily = await wait_until(lambda: runs_of(tenant, "daily"), "the daily run")
    assert len(daily) == 1 and datetime.fromisoformat(daily[0]["logical_date"]) == day
    assert (await finished(tenant, daily[0]))["status"] == "SUCCEEDED"


async def test_a_wait_timeout_fails_the_run_naming_the_missing_upstream_runs(
    service: Any,
) -> None:
    tenant = await service.tenant()
    await tenant.apply(pipeline("present"))
    await tenant.apply(pipeline("absent"))
    await tenant.apply(pipeline("late", "present", "absent", timeout="2s"))
    day = datetime(2026, 2, 1, 23, tzinfo=UTC)
    await finished(tenant, await trigger(tenant, "present", day))
    late = await wait_until(lambda: runs_of(tenant, "late"), "the failed run", timeout=30)
    assert late[0]["status"] == "FAILED" and late[0]["trigger"] == "dependency"
    assert late[0]["error"] == (
        "the upstream runs it depends on did not succeed within the wait timeout: "
        f"absent@{day.isoformat()}"
    )
