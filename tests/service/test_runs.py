"""Runs through the API end to end: trigger, the worker records every attempt, get, list,
cancel, idempotency."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from sqlalchemy import func, select, text

from pipeline_service.db.models import OutboxEvent, Run
from tests.service.conftest import Service, Tenant

FLAKY: dict[str, Any] = {
    "name": "flaky",
    "steps": [
        {"id": "start", "type": "noop"},
        {
            "id": "extract",
            "type": "python",
            "script": "scripts/flaky_extract.py",
            "depends_on": ["start"],
            "retry": {"max_attempts": 3, "initial_interval": 0.1},
        },
        {"id": "done", "type": "noop", "depends_on": ["extract"]},
    ],
}


async def wait_finished(tenant: Tenant, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await tenant.http.get(f"/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        run = response.json()
        if run["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return dict(run)
        await asyncio.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish: {run}")


async def test_a_run_records_every_attempt_and_its_events(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(FLAKY)
    response = await tenant.http.post("/v1/pipelines/flaky/runs", json={})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    assert response.json()["status"] in ("QUEUED", "RUNNING")
    run = await wait_finished(tenant, run_id)
    assert run["status"] == "SUCCEEDED", run
    assert run["actor"] == "ci" and run["version"] == 1
    steps = {s["step_id"]: s for s in run["steps"]}
    assert [s["status"] for s in run["steps"]] == ["SUCCEEDED"] * 3
    extract = steps["extract"]["attempts"]
    assert [(a["attempt"], a["status"]) for a in extract] == [
        (1, "FAILED"),
        (2, "FAILED"),
        (3, "SUCCEEDED"),
    ]
    assert "source unavailable" in extract[0]["error"]
    assert extract[2]["duration_ms"] is not None
    assert "extracted 100 rows" in (extract[2]["log_tail"] or "")
    with service.sessions() as session:
        types = session.scalars(
            select(OutboxEvent.type).where(OutboxEvent.key == run_id).order_by(OutboxEvent.seq)
        ).all()
    assert types[0] == "PIPELINE_QUEUED" and types[1] == "PIPELINE_STARTED"
    assert types[-1] == "PIPELINE_SUCCEEDED"
    assert types.count("PIPELINE_STEP_COMPLETED") == 3
    assert types.count("PIPELINE_STEP_RETRYING") == 2


async def test_twenty_concurrent_triggers_with_one_key_make_one_run(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply({"name": "once", "steps": [{"id": "a", "type": "noop"}]})
    headers = {"Idempotency-Key": "deploy-42"}
    responses = await asyncio.gather(
        *(tenant.http.post("/v1/pipelines/once/runs", json={}, headers=headers) for _ in range(20))
    )
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    assert sorted(r.status_code for r in responses).count(201) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    with service.sessions() as session:
        count = session.scalar(
            select(func.count())
            .select_from(Run)
            .where(
                Run.idempotency_key == "deploy-42",
                Run.actor == "ci",
                Run.workflow_id.startswith(tenant.name),
            )
        )
    assert count == 1
    run = await wait_finished(tenant, responses[0].json()["id"])
    assert run["status"] == "SUCCEEDED"
    # The same key later (the run has finished) is still the same run; other params: 409.
    again = await tenant.http.post("/v1/pipelines/once/runs", json={}, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == run["id"]


SLOW_SQL = (
    "SELECT count(*) FROM range(1000000000) a, range(1000000000) b WHERE a.range + b.range = -1"
)


async def test_cancel_reaches_the_running_step(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(
        {
            "name": "slow",
            "steps": [
                {"id": "slow", "type": "sql", "sql": SLOW_SQL},
                {"id": "after", "type": "noop", "depends_on": ["slow"]},
            ],
        }
    )
    run_id = (await tenant.http.post("/v1/pipelines/slow/runs", json={})).json()["id"]
    deadline = time.monotonic() + 30
    while (await tenant.http.get(f"/v1/runs/{run_id}")).json()["steps"][0]["status"] != "RUNNING":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # A running run is neither retried nor replayed (only finished ones are).
    for action, path in (("retry", "retry"), ("replay", "quarantine/any_check/replay")):
        refused = await tenant.http.post(f"/v1/runs/{run_id}/{path}", json={})
        assert refused.status_code == 409, refused.text
        assert f"is RUNNING: {action} a finished run" in refused.json()["detail"]
    response = await tenant.http.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 202, response.text
    run = await wait_finished(tenant, run_id, timeout=30)
    assert run["status"] == "CANCELLED"
    steps = {s["step_id"]: s["status"] for s in run["steps"]}
    assert steps == {"slow": "CANCELLED", "after": "SKIPPED"}
    again = await tenant.http.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 409


async def test_runs_list_filters_and_pages(service: Service) -> None:
    tenant = await service.tenant()
    for name in ("one", "two"):
        await tenant.apply({"name": name, "steps": [{"id": "a", "type": "noop"}]})
    started = [
        (await tenant.http.post(f"/v1/pipelines/{name}/runs", json={})).json()["id"]
        for name in ("one", "two", "one")
    ]
    for run_id in started:
        await wait_finished(tenant, run_id)
    page = (await tenant.http.get("/v1/runs", params={"pipeline": "one"})).json()
    assert [r["id"] for r in page["items"]] == [started[2], started[0]]
    first = (await tenant.http.get("/v1/runs", params={"limit": 2})).json()
    rest = (await tenant.http.get("/v1/runs", params={"cursor": first["next_cursor"]})).json()
    assert [r["id"] for r in first["items"] + rest["items"]] == started[::-1]
    assert rest["next_cursor"] is None
    failed = (await tenant.http.get("/v1/runs", params={"status": "FAILED"})).json()
    assert failed["items"] == []
    # A dated run is one per logical date.
    body = {"logical_date": "2026-01-31T00:00:00Z"}
    a = await tenant.http.post("/v1/pipelines/two/runs", json=body)
    b = await tenant.http.post("/v1/pipelines/two/runs", json=body)
    assert (a.status_code, b.status_code) == (201, 200) and a.json()["id"] == b.json()["id"]
    assert a.json()["workflow_id"] == f"{tenant.name}/two/2026-01-31T00:00:00+00:00"
    bad = await tenant.http.post("/v1/pipelines/two/runs", json={"params": {"nope": 1}})
    assert bad.status_code == 422 and "nope" in bad.text


async def test_health_and_metrics(service: Service) -> None:
    assert (await service.http.get("/health/live")).json() == {"status": "ok"}
    ready = await service.http.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "temporal": "ok"}
    tenant = await service.tenant()
    await tenant.apply({"name": "m", "steps": [{"id": "a", "type": "noop"}]})
    run_id = (await tenant.http.post("/v1/pipelines/m/runs", json={})).json()["id"]
    await wait_finished(tenant, run_id)
    text = (await service.http.get("/metrics")).text
    assert f'laminar_runs_started_total{{tenant="{tenant.name}",trigger="manual"}} 1.0' in text
    assert f'laminar_runs{{status="SUCCEEDED",tenant="{tenant.name}"}} 1.0' in text
    assert (
        'laminar_api_request_seconds_count{method="POST",route="/v1/pipelines/{name}/runs"' in text
    )


async def test_run_reads_keep_the_connections_prepared_statements(service: Service) -> None:
    """psycopg forgets a connection's prepared statements at every ROLLBACK; a run read ends
    its transaction with COMMIT, so after a few reads on a connection PostgreSQL runs the run's
    query from a prepared statement instead of planning it again for every read."""
    if service.kind != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    tenant = await service.tenant()
    await tenant.apply({"name": "prepared", "steps": [{"id": "a", "type": "noop"}]})
    response = await tenant.http.post("/v1/pipelines/prepared/runs", json={})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    await wait_finished(tenant, run_id)
    engine = service.app.state.services.engine
    # psycopg prepares a statement at its 5th execution on a connection; the pool hands out
    # its idle connections in turn, so read enough times for each to reach that.
    for _ in range(6 * (engine.pool.checkedin() + 1)):
        assert (await tenant.http.get(f"/v1/runs/{run_id}")).status_code == 200
    idle = engine.pool.checkedin()
    prepared = 0
    with contextlib.ExitStack() as held:  # every idle connection at once: each one's own
        for connection in [held.enter_context(engine.connect()) for _ in range(idle)]:
            prepared += connection.execute(
                text(
                    "SELECT count(*) FROM pg_prepared_statements "
                    "WHERE statement LIKE '%FROM runs JOIN pipelines%'"
                )
            ).scalar_one()
            connection.rollback()
    assert prepared >= 1, f"no connection of {idle} kept the run read prepared"
