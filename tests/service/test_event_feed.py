"""Events without Kafka: a run's history and the tenant's feed with a cursor that does not
skip late commits."""

from __future__ import annotations

import asyncio
import json

import jsonschema_rs
import pytest
from sqlalchemy import select

from pipeline_service.db.models import OutboxEvent, Tenant
from pipeline_service.db.outbox import add_event
from schemas.event_docs import event_json_schema
from schemas.events import EventType
from tests.service.conftest import Service
from tests.service.test_runs import FLAKY, wait_finished


async def test_a_runs_events_are_readable_without_kafka(service: Service) -> None:
    tenant = await service.tenant()
    other = await service.tenant()
    await tenant.apply(FLAKY)
    run_id = (await tenant.http.post("/v1/pipelines/flaky/runs", json={})).json()["id"]
    await wait_finished(tenant, run_id)
    response = await tenant.http.get(f"/v1/runs/{run_id}/events")
    assert response.status_code == 200, response.text
    events = response.json()
    with service.sessions() as session:
        recorded = session.scalars(
            select(OutboxEvent.event_id).where(OutboxEvent.key == run_id).order_by(OutboxEvent.seq)
        ).all()
    assert [event["id"] for event in events] == list(recorded)
    assert events[0]["type"] == "PIPELINE_QUEUED" and events[-1]["type"] == "PIPELINE_SUCCEEDED"
    for event in events:
        jsonschema_rs.validate(event_json_schema(EventType(event["type"])), event)
    assert (await other.http.get(f"/v1/runs/{run_id}/events")).status_code == 404


async def test_the_feed_is_tenant_scoped_and_long_polls(service: Service) -> None:
    tenant = await service.tenant()
    other = await service.tenant()
    await tenant.apply(FLAKY)
    await other.apply({**FLAKY, "name": "others"})
    page = (await tenant.http.get("/v1/events", params={"limit": 1000})).json()
    assert [e["type"] for e in page["events"]] == ["PIPELINE_CREATED"]
    assert {e["data"]["tenant"] for e in page["events"]} == {tenant.name}
    again = (await tenant.http.get("/v1/events", params={"after": page["next"]})).json()
    assert again["events"] == []

    async def validate_later() -> None:
        await asyncio.sleep(0.5)
        response = await tenant.http.post("/v1/pipelines/flaky/validate")
        assert response.status_code in (200, 201), response.text

    poll = tenant.http.get("/v1/events", params={"after": again["next"], "wait": 10})
    response, _ = await asyncio.gather(poll, validate_later())
    assert [e["type"] for e in response.json()["events"]] == ["PIPELINE_VALIDATED"]
    bad = await tenant.http.get("/v1/events", params={"after": "not-a-cursor"})
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]


async def test_the_cursor_does_not_skip_a_late_commit(service: Service) -> None:
    if service.kind == "sqlite":
        pytest.skip("SQLite serializes writers: a lower seq cannot commit after a higher one")
    tenant = await service.tenant()
    with service.sessions() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant.name))
    assert tenant_id is not None

    def event(session: object, name: str) -> None:
        add_event(
            session,  # type: ignore[arg-type]
            tenant_id=tenant_id,
            key="pipeline:0",
            type=EventType.PIPELINE_UPDATED,
            actor="ci",
            payload={"pipeline": name, "version": 1, "status": "DRAFT"},
        )

    start = (await tenant.http.get("/v1/events")).json()["next"]
    slow = service.sessions()
    slow.begin()
    event(slow, "slow")
    slow.flush()  # takes the lower seq, commits last
    with service.sessions() as fast, fast.begin():
        event(fast, "fast")
    first = (await tenant.http.get("/v1/events", params={"after": start})).json()
    assert [e["data"]["pipeline"] for e in first["events"]] == ["fast"]
    slow.commit()
    slow.close()
    second = (await tenant.http.get("/v1/events", params={"after": first["next"]})).json()
    assert [e["data"]["pipeline"] for e in second["events"]] == ["slow"]
    third = (await tenant.http.get("/v1/events", params={"after": second["next"]})).json()
    assert third["events"] == []
    assert json.loads(json.dumps(third)) == third
