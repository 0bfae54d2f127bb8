"""Backfills end to end on the dev server: 365 daily intervals give exactly 365 runs with never
more than max_concurrency at once (sampled in the database), the same backfill twice gives no
run twice, dry runs per reprocess; pause, resume, cancel (cancels its runs), reverse order."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from pipeline_service.db.models import Pipeline, Run
from tests.service.conftest import Service, Tenant

ACTIVE = ("QUEUED", "RUNNING", "RETRYING")


def daily(
    name: str, steps: list[dict[str, Any]] | None = None, cron: str = "@daily"
) -> dict[str, Any]:
    return {
        "name": name,
        # Paused: only the backfill starts runs here.
        "schedule": {"cron": cron, "timezone": "Europe/Berlin", "paused": True},
        "steps": steps or [{"id": "a", "type": "noop"}],
    }


def count_runs(service: Service, tenant: str, pipeline: str, statuses: tuple[str, ...] = ()) -> int:
    with service.sessions() as session:
        query = (
            select(func.count())
            .select_from(Run)
            .join(Pipeline, Pipeline.id == Run.pipeline_id)
            .where(Pipeline.name == pipeline, Run.workflow_id.startswith(f"{tenant}/"))
        )
        if statuses:
            query = query.where(Run.status.in_(statuses))
        return int(session.scalar(query) or 0)


async def wait_state(tenant: Tenant, backfill: str, states: set[str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await tenant.http.get(f"/v1/backfills/{backfill}")
        assert response.status_code == 200, response.text
        if response.json()["state"] in states:
            return response.json()
        await asyncio.sleep(0.2)
    raise AssertionError(f"backfill {backfill}: {response.json()}")


@pytest.mark.slow
async def test_a_year_of_daily_intervals_runs_exactly_once_within_max_concurrency(
    service: Service,
) -> None:
    tenant = await service.tenant()
    await tenant.apply(daily("year"))
    body = {"start": "2025-01-01", "end": "2026-01-01", "max_concurrency": 10}
    dry = await tenant.http.post("/v1/pipelines/year/backfills", json={**body, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["total"] == 365 and len(dry.json()["logical_dates"]) == 365
    assert dry.json()["logical_dates"][0] == "2024-12-31T23:00:00Z"  # midnight in Berlin

    response = await tenant.http.post("/v1/pipelines/year/backfills", json=body)
    assert response.status_code == 201, response.text
    backfill = response.json()["backfill_id"]
    peak = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        peak = max(peak, count_runs(service, tenant.name, "year", ACTIVE))
        progress = (await tenant.http.get(f"/v1/backfills/{backfill}")).json()
        if progress["state"] == "COMPLETED":
            break
        await asyncio.sleep(0.05)
    assert progress["state"] == "COMPLETED", progress
    assert 1 <= peak <= 10, peak
    assert progress["peak_in_flight"] <= 10
    assert progress["counts"]["succeeded"] == progress["counts"]["started"] == 365, progress
    assert progress["total"] == 365
    assert count_runs(service, tenant.name, "year") == 365
    runs = (await tenant.http.get("/v1/runs", params={"pipeline": "year", "limit": 200})).json()
    assert {r["trigger"] for r in runs["items"]} == {"backfill"}

    # The same backfill again: the same one, nothing new.
    again = await tenant.http.post("/v1/pipelines/year/backfills", json=body)
    assert again.status_code == 200 and again.json()["backfill_id"] == backfill, again.text
    # Overlapping range, another backfill: the dates that have runs are skipped.
    wider = {**body, "end": "2026-01-03", "max_concurrency": 5}
    response = await tenant.http.post("/v1/pipelines/year/backfills", json=wider)
    assert response.status_code == 201, response.text
    other = await wait_state(tenant, response.json()["backfill_id"], {"COMPLETED"})
    assert other["counts"]["skipped"] == 365 and other["counts"]["succeeded"] == 2, other
    assert count_runs(service, tenant.name, "year") == 367
    dry = await tenant.http.post(
        "/v1/pipelines/year/backfills", json={**body, "dry_run": True, "reprocess": "all"}
    )
    assert len(dry.json()["logical_dates"]) == 365 and dry.json()["skipped"] == 0


async def test_pause_resume_cancel_and_reprocess(service: Service) -> None:
    tenant = await service.tenant()
    slow = [{"id": "w", "type": "python", "script": "scripts/wait_seconds.py", "args": ["1.5"]}]
    await tenant.apply(daily("hours", slow, cron="@hourly"))
    start = datetime(2027, 10, 30, 22, tzinfo=UTC)  # midnight 2027-10-31 in Berlin (25 hours)
    body = {
        "start": start.isoformat(),
        "end": (start + timedelta(hours=25)).isoformat(),
        "max_concurrency": 3,
        "order": "reverse",
    }
    dry = await tenant.http.post("/v1/pipelines/hours/backfills", json={**body, "dry_run": True})
    dates = [datetime.fromisoformat(d) for d in dry.json()["logical_dates"]]
    assert len(dates) == 25 and dates == sorted(dates, reverse=True)
    response = await tenant.http.post("/v1/pipelines/hours/backfills", json=body)
    assert response.status_code == 201, response.text
    backfill = response.json()["backfill_id"]
    response = await tenant.http.post(f"/v1/backfills/{backfill}/pause")
    assert response.status_code == 202, response.text
    await asyncio.sleep(4)  # what was in flight finishes; nothing new starts
    paused = await wait_state(tenant, backfill, {"PAUSED"})
    assert paused["in_flight"] == 0
    held = count_runs(service, tenant.name, "hours")
    assert held <= 3
    await asyncio.sleep(2)
    assert count_runs(service, tenant.name, "hours") == held
    await tenant.http.post(f"/v1/backfills/{backfill}/resume")
    deadline = time.monotonic() + 30
    while count_runs(service, tenant.name, "hours", ACTIVE) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert count_runs(service, tenant.name, "hours", ACTIVE) == 3
    response = await tenant.http.post(f"/v1/backfills/{backfill}/cancel")
    assert response.status_code == 202, response.text
    done = await wait_state(tenant, backfill, {"CANCELLED"})
    assert done["counts"]["cancelled"] >= 1, done
    await asyncio.sleep(2)
    assert count_runs(service, tenant.name, "hours", ACTIVE) == 0
    cancelled = count_runs(service, tenant.name, "hours", ("CANCELLED",))
    total = count_runs(service, tenant.name, "hours")
    assert cancelled >= 1 and total < 25
    # The newest hours ran first (reverse).
    runs = (await tenant.http.get("/v1/runs", params={"pipeline": "hours"})).json()["items"]
    assert max(datetime.fromisoformat(r["logical_date"]) for r in runs) == dates[0]
    # reprocess=failed: the missing and the cancelled dates; missing: only the missing ones.
    for reprocess, expected in (("failed", 25 - total + cancelled), ("missing", 25 - total)):
        dry = await tenant.http.post(
            "/v1/pipelines/hours/backfills",
            json={**body, "dry_run": True, "reprocess": reprocess},
        )
        assert len(dry.json()["logical_dates"]) == expected, (reprocess, dry.json())


async def test_bad_backfill_requests_get_clear_errors(service: Service) -> None:
    tenant = await service.tenant()
    await tenant.apply(daily("fine", cron="* * * * * *"))
    await tenant.apply({"name": "unscheduled", "steps": [{"id": "a", "type": "noop"}]})
    cases = [
        ("fine", {"start": "2025-01-02", "end": "2025-01-01"}, 422, "must be after start"),
        ("fine", {"start": "2000-01-01", "end": "2025-01-01"}, 422, "at most 1,000,000"),
        ("unscheduled", {"start": "2025-01-01", "end": "2025-01-02"}, 422, "has no schedule"),
        ("nope", {"start": "2025-01-01", "end": "2025-01-02"}, 404, "not found"),
        ("fine", {"start": "2025-01-01", "end": "x"}, 422, ""),
        ("fine", {"start": "2025-01-01", "end": "2025-01-02", "reprocess": "some"}, 422, ""),
    ]
    for name, body, status, phrase in cases:
        response = await tenant.http.post(f"/v1/pipelines/{name}/backfills", json=body)
        assert response.status_code == status, (body, response.text)
        assert phrase in response.json()["detail"], response.text
    response = await tenant.http.get("/v1/backfills/bf-unknown")
    assert response.status_code == 404, response.text
    other = await service.tenant()
    dry = {"start": "2025-01-01", "end": "2025-01-01T00:00:05Z", "dry_run": True}
    assert (await other.http.post("/v1/pipelines/fine/backfills", json=dry)).status_code == 404
