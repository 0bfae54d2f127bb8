"""A sensor on a pipeline's run for a logical date, on the dev server with the service's
database: it waits (on timers, checking the runs table) until the tenant's own upstream run of
that date succeeded; another tenant's run of the same pipeline name and date does not count;
at its timeout it fails naming the run it waited for."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from tests.service.conftest import Service
from tests.service.test_dependencies import finished, runs_of, trigger

DAY = datetime(2026, 3, 2, tzinfo=UTC)


def report(upstream: dict[str, Any], timeout: str = "90s") -> dict[str, Any]:
    return {
        "name": "report",
        "params": {"day": "2026-03-01"},
        "steps": [
            {
                "id": "orders_done",
                "type": "sensor",
                "upstream": upstream,
                "poke_interval": "1s",
                "timeout": timeout,
            },
            {"id": "build", "type": "noop", "depends_on": ["orders_done"]},
        ],
    }


ORDERS = {"name": "orders", "steps": [{"id": "load", "type": "noop"}]}


async def test_a_sensor_waits_for_the_tenants_own_upstream_run(service: Service) -> None:
    mine, other = await service.tenant(), await service.tenant()
    await other.apply(ORDERS)
    # Another tenant's `orders` run for the same date succeeded first: it must not count.
    assert (await finished(other, await trigger(other, "orders", DAY)))["status"] == "SUCCEEDED"
    await mine.apply(ORDERS)
    await mine.apply(report({"pipeline": "orders"}))
    waiting = await trigger(mine, "report", DAY)
    await asyncio.sleep(4)
    body = (await mine.http.get(f"/v1/runs/{waiting['id']}")).json()
    assert body["status"] == "RUNNING", body
    assert await runs_of(mine, "orders") == []
    upstream = await trigger(mine, "orders", DAY)
    assert (await finished(mine, upstream))["status"] == "SUCCEEDED"
    done = await finished(mine, waiting)
    assert done["status"] == "SUCCEEDED", done
    steps = {s["step_id"]: s for s in done["steps"]}
    outputs = steps["orders_done"]["attempts"][-1]["outputs"]
    assert outputs["met"] is True and outputs["pipeline"] == "orders"
    assert outputs["logical_date"] == DAY.isoformat() and outputs["status"] == "SUCCEEDED"
    assert outputs["checks"] >= 3  # it really waited: several checks on timers
    assert steps["build"]["status"] == "SUCCEEDED"


async def test_a_sensor_times_out_naming_the_run_it_waited_for(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(ORDERS)
    # Waits for the `day` param's run (2026-03-01), which never comes; DAY's run is there.
    await tenant.apply(
        report({"pipeline": "orders", "logical_date": "{{ params.day }}"}, timeout="3s")
    )
    assert (await finished(tenant, await trigger(tenant, "orders", DAY)))["status"] == "SUCCEEDED"
    failed = await finished(tenant, await trigger(tenant, "report", DAY))
    assert failed["status"] == "FAILED", failed
    steps = {s["step_id"]: s for s in failed["steps"]}
    error = steps["orders_done"]["attempts"][-1]["error"]
    assert "sensor timed out after" in error, error
    assert (
        "waiting for the run of pipeline 'orders' for logical date 2026-03-01T00:00:00+00:00 "
        "to succeed (no run yet)"
    ) in error, error
    assert steps["build"]["status"] == "SKIPPED"
