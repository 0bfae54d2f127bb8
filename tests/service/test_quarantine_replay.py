"""Dead-letter replay end to end on the platform (real worker, DuckDB warehouse, Temporal dev
server): planted bad rows are quarantined by a warn check, fixed in the quarantine table by a
SQL run, and re-fed through the pipeline by `POST /v1/runs/{id}/quarantine/{check}/replay`,
which starts a new run linked to the first."""

from __future__ import annotations

from typing import Any

from tests.service.conftest import Service
from tests.service.test_runs import wait_finished

ORDERS: dict[str, Any] = {
    "name": "orders_replay",
    "steps": [
        {
            "id": "load_orders",
            "type": "sql",
            # A replay run reads the fixed rows of the run it replays; a normal run its source.
            "sql": """
CREATE OR REPLACE TABLE orders_in AS
{% if replay %}
SELECT order_id, status FROM {{ replay.schema | ident }}.{{ replay.table | ident }}
WHERE _laminar_run_id = {{ replay.run_id }}
{% else %}
SELECT * FROM (VALUES (1, 'paid'), (2, 'payed'), (3, 'shiped')) AS t(order_id, status)
{% endif %}""",
        },
        {
            "id": "check_orders",
            "type": "quality",
            "depends_on": ["load_orders"],
            "table": "orders_in",
            "checks": [
                {"type": "row_count", "min": 1},
                {
                    "type": "accepted_values",
                    "column": "status",
                    "values": ["paid", "shipped"],
                    "severity": "warn",
                },
            ],
        },
        {
            "id": "accept",
            "type": "sql",
            "depends_on": ["check_orders"],
            "sql": """
CREATE TABLE IF NOT EXISTS orders_accepted (order_id INTEGER, status VARCHAR);
INSERT INTO orders_accepted
SELECT order_id, status FROM orders_in WHERE status IN ('paid', 'shipped');""",
        },
    ],
}

FIX: dict[str, Any] = {
    "name": "fix_orders",
    "params": {"run": {"type": "string", "required": True}},
    "steps": [
        {
            "id": "fix",
            "type": "sql",
            "sql": """
UPDATE quarantine.check_orders__accepted_values_status
SET status = CASE status WHEN 'payed' THEN 'paid' WHEN 'shiped' THEN 'shipped' END
WHERE _laminar_run_id = {{ params.run }}""",
        }
    ],
}


def step(run: dict[str, Any], step_id: str) -> dict[str, Any]:
    [found] = [s for s in run["steps"] if s["step_id"] == step_id]
    return dict(found["attempts"][-1])


async def test_fixed_quarantined_rows_are_replayed_in_a_linked_run(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(ORDERS)
    await tenant.apply(FIX)
    response = await tenant.http.post("/v1/pipelines/orders_replay/runs", json={})
    assert response.status_code == 201, response.text
    first = await wait_finished(tenant, response.json()["id"])
    assert first["status"] == "SUCCEEDED", first
    [outcome] = [o for o in step(first, "check_orders")["outputs"]["checks"]
                 if o["check"] == "accepted_values_status"]  # fmt: skip
    assert outcome["failing_rows"] == 2
    assert step(first, "accept")["rows_affected"] == 1  # order 1 only

    fix = await tenant.http.post(
        "/v1/pipelines/fix_orders/runs", json={"params": {"run": first["workflow_id"]}}
    )
    assert fix.status_code == 201, fix.text
    fixed = await wait_finished(tenant, fix.json()["id"])
    assert fixed["status"] == "SUCCEEDED", fixed
    assert step(fixed, "fix")["rows_affected"] == 2

    response = await tenant.http.post(
        f"/v1/runs/{first['id']}/quarantine/accepted_values_status/replay", json={}
    )
    assert response.status_code == 201, response.text
    assert response.json()["replay_of"] == first["id"]
    replayed = await wait_finished(tenant, response.json()["id"])
    assert replayed["status"] == "SUCCEEDED", replayed
    assert replayed["replay_of"] == first["id"]
    assert replayed["replay"] == {
        "run_id": first["workflow_id"],
        "step": "check_orders",
        "check": "accepted_values_status",
        "schema": "quarantine",
        "table": "check_orders__accepted_values_status",
    }
    assert replayed["logical_date"] == first["logical_date"]
    [outcome] = [o for o in step(replayed, "check_orders")["outputs"]["checks"]
                 if o["check"] == "accepted_values_status"]  # fmt: skip
    assert outcome["failing_rows"] == 0  # the fixed rows pass now
    assert step(replayed, "load_orders")["rows_affected"] == 2
    assert step(replayed, "accept")["rows_affected"] == 2  # orders 2 and 3, accepted
    # The original run is unchanged and not linked to anything.
    original = (await tenant.http.get(f"/v1/runs/{first['id']}")).json()
    assert original["replay_of"] is None and original["replay"] is None


async def test_replay_refusals(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(ORDERS)
    response = await tenant.http.post("/v1/pipelines/orders_replay/runs", json={})
    run = await wait_finished(tenant, response.json()["id"])
    base = f"/v1/runs/{run['id']}/quarantine"
    unknown = await tenant.http.post(f"{base}/nope/replay", json={})
    assert unknown.status_code == 404, unknown.text
    assert "check 'nope'" in unknown.json()["detail"]
    whole = await tenant.http.post(f"{base}/row_count/replay", json={})
    assert whole.status_code == 422, whole.text
    assert "quarantines no rows" in whole.json()["detail"]
    other = await service.tenant()
    hidden = await other.http.post(f"{base}/accepted_values_status/replay", json={})
    assert hidden.status_code == 404, hidden.text
