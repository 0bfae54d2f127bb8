"""Retry from failure, re-run from a step, and marking a step: the new run reuses what
succeeded (it does not run again) and is linked to the run it retries."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.service.conftest import Service, Tenant
from tests.service.test_runs import wait_finished


def _gated(suffix: str) -> dict[str, Any]:
    return {
        "name": "gated",
        "steps": [
            {"id": "count", "type": "sql", "sql": f"INSERT INTO counter_{suffix} VALUES (1)"},
            {
                "id": "gate",
                "type": "sql",
                "depends_on": ["count"],
                "sql": f"CREATE OR REPLACE TABLE out_{suffix} AS SELECT * FROM gate_{suffix}",
                "retry": {"max_attempts": 1},
            },
            {"id": "after", "type": "noop", "depends_on": ["gate"]},
        ],
    }


async def _sql(service: Service, statement: str) -> list[Any]:
    def run() -> list[Any]:
        cursor = service.warehouse.cursor()
        cursor.execute(statement)
        return cursor.fetchall() if cursor.description else []

    return await asyncio.to_thread(run)


async def _failed_run(service: Service) -> tuple[Tenant, str, dict[str, Any]]:
    tenant = await service.tenant()
    suffix = tenant.name.replace("-", "_")
    await _sql(service, f"CREATE TABLE counter_{suffix} (n INTEGER)")
    await tenant.apply(_gated(suffix))
    run_id = (await tenant.http.post("/v1/pipelines/gated/runs", json={})).json()["id"]
    run = await wait_finished(tenant, run_id)
    assert run["status"] == "FAILED", run
    assert [s["status"] for s in run["steps"]] == ["SUCCEEDED", "FAILED", "SKIPPED"]
    return tenant, suffix, run


async def test_retry_from_failure_reuses_what_succeeded(service: Service) -> None:
    tenant, suffix, failed = await _failed_run(service)
    await _sql(service, f"CREATE TABLE gate_{suffix} AS SELECT 1 AS x")
    response = await tenant.http.post(f"/v1/runs/{failed['id']}/retry", json={})
    assert response.status_code == 201, response.text
    retried = await wait_finished(tenant, response.json()["id"])
    assert retried["status"] == "SUCCEEDED", retried
    assert retried["retry_of"] == failed["id"] and retried["version"] == failed["version"]
    assert await _sql(service, f"SELECT count(*) FROM counter_{suffix}") == [(1,)]
    # Re-run from a step: that step and what follows run again; the rest is reused.
    response = await tenant.http.post(f"/v1/runs/{retried['id']}/retry", json={"from_step": "gate"})
    assert response.status_code == 201, response.text
    rerun = await wait_finished(tenant, response.json()["id"])
    assert rerun["status"] == "SUCCEEDED"
    assert await _sql(service, f"SELECT count(*) FROM counter_{suffix}") == [(1,)]
    bad = await tenant.http.post(f"/v1/runs/{retried['id']}/retry", json={"from_step": "nope"})
    assert bad.status_code == 422
    done = await tenant.http.post(f"/v1/runs/{retried['id']}/retry", json={})
    assert done.status_code == 409


async def test_a_marked_step_is_recorded_and_reused(service: Service) -> None:
    tenant, suffix, failed = await _failed_run(service)
    response = await tenant.http.post(
        f"/v1/runs/{failed['id']}/steps/gate/mark",
        json={"status": "SKIPPED", "reason": "the gate table is retired"},
    )
    assert response.status_code == 200, response.text
    gate = {s["step_id"]: s for s in response.json()["steps"]}["gate"]
    assert gate["status"] == "SKIPPED"
    assert gate["attempts"][-1]["marked_by"] == "ci"
    assert gate["attempts"][-1]["mark_reason"] == "the gate table is retired"
    response = await tenant.http.post(f"/v1/runs/{failed['id']}/retry", json={})
    retried = await wait_finished(tenant, response.json()["id"])
    assert retried["status"] == "SUCCEEDED", retried
    assert await _sql(service, f"SELECT count(*) FROM counter_{suffix}") == [(1,)]
    again = await tenant.http.post(
        f"/v1/runs/{retried['id']}/steps/gate/mark", json={"status": "SKIPPED", "reason": "x"}
    )
    assert again.status_code == 409


async def test_a_reused_step_hands_its_tables_to_the_steps_that_run_again(
    service: Service,
) -> None:
    """Retry from failure reuses a python step with `outputs:`: the step that runs again still
    reads the reused step's table through `steps.<id>.outputs.<name>`."""
    tenant = await service.tenant()
    suffix = tenant.name.replace("-", "_")
    await tenant.apply(
        {
            "name": "handoff_retry",
            "steps": [
                {
                    "id": "extract",
                    "type": "python",
                    "script": "scripts/extract_cities.py",
                    "outputs": {"städte": "cities.csv"},
                },
                {
                    "id": "report",
                    "type": "sql",
                    "depends_on": ["extract"],
                    "retry": {"max_attempts": 1},
                    "sql": f"CREATE OR REPLACE TABLE report_{suffix} AS SELECT sum(people) AS n "
                    f"FROM {{{{ steps.extract.outputs['städte'] }}}}, gate_{suffix}",
                },
            ],
        }
    )
    run_id = (await tenant.http.post("/v1/pipelines/handoff_retry/runs", json={})).json()["id"]
    failed = await wait_finished(tenant, run_id)
    assert [s["status"] for s in failed["steps"]] == ["SUCCEEDED", "FAILED"], failed
    await _sql(service, f"CREATE TABLE gate_{suffix} AS SELECT 1 AS x")
    response = await tenant.http.post(f"/v1/runs/{run_id}/retry", json={})
    assert response.status_code == 201, response.text
    retried = await wait_finished(tenant, response.json()["id"])
    assert retried["status"] == "SUCCEEDED", retried
    extract = {s["step_id"]: s for s in retried["steps"]}["extract"]
    assert len(extract["attempts"]) == 1  # reused, not run again
    assert await _sql(service, f"SELECT n FROM report_{suffix}") == [(2_510_000,)]
