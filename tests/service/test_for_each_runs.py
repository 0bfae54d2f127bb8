"""A `for_each` run through the API: a list param given at trigger time, the instances'
recorded rows in the run view, beside their step and in item order."""

from __future__ import annotations

from typing import Any

from tests.service.conftest import Service
from tests.service.test_runs import wait_finished

FAN_OUT: dict[str, Any] = {
    "name": "fan_out",
    "params": {"regions": {"type": "list", "default": ["eu"]}},
    "steps": [
        {"id": "fan", "type": "noop", "for_each": "{{ params.regions }}", "max_parallel": 2},
        {"id": "done", "type": "noop", "depends_on": ["fan"]},
    ],
}


async def test_instances_show_in_the_run_view(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(FAN_OUT)
    regions = [f"r{i}" for i in range(12)]  # indexes 10 and 11 sort after 9, not after 1
    response = await tenant.http.post(
        "/v1/pipelines/fan_out/runs", json={"params": {"regions": regions}}
    )
    assert response.status_code == 201, response.text
    run = await wait_finished(tenant, response.json()["id"])
    assert run["status"] == "SUCCEEDED", run
    ids = [s["step_id"] for s in run["steps"]]
    assert ids == ["fan", *(f"fan[{i}]" for i in range(12)), "done"]
    assert all(s["status"] == "SUCCEEDED" for s in run["steps"])
    assert all(len(s["attempts"]) == 1 for s in run["steps"])


async def test_a_list_param_that_is_no_list_is_refused(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(FAN_OUT)
    response = await tenant.http.post(
        "/v1/pipelines/fan_out/runs", json={"params": {"regions": {"a": 1}}}
    )
    assert response.status_code == 422, response.text
    assert "expected a list" in response.text
