"""A real run's events, as the worker records them, published by the relay to a real
Kafka-protocol broker (Tansu) and read back."""

from __future__ import annotations

import json
import time
import uuid

import jsonschema_rs
from sqlalchemy import select

from pipeline_service.db.models import OutboxEvent
from pipeline_service.events.broker import EmbeddedBroker
from pipeline_service.events.relay import EventRelay
from schemas.event_docs import event_json_schema
from schemas.events import EventType
from tests.integration.kafka_events import read_topic
from tests.service.conftest import Service
from tests.service.test_runs import FLAKY, wait_finished


async def test_a_runs_events_reach_kafka_in_order(
    service: Service, kafka_broker: EmbeddedBroker
) -> None:
    tenant = await service.tenant()
    await tenant.apply(FLAKY)
    response = await tenant.http.post("/v1/pipelines/flaky/runs", json={})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    assert (await wait_finished(tenant, run_id))["status"] == "SUCCEEDED"

    topic = f"events-{uuid.uuid4().hex[:8]}"
    settings = service.settings.model_copy(
        update={"kafka_bootstrap_servers": kafka_broker.bootstrap_servers, "events_topic": topic}
    )
    relay = EventRelay(service.sessions.kw["bind"], settings)
    with service.sessions() as session:
        rows = session.scalars(
            select(OutboxEvent)
            .where(
                OutboxEvent.tenant_id.in_(
                    select(OutboxEvent.tenant_id).where(OutboxEvent.key == run_id)
                )
            )
            .order_by(OutboxEvent.seq)
        ).all()
    expected = {row.key: [] for row in rows}  # type: dict[str, list[str]]
    for row in rows:
        expected[row.key].append(row.event_id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        relay.publish_round()
        with service.sessions() as session:
            left = session.scalars(
                select(OutboxEvent.seq).where(
                    OutboxEvent.event_id.in_([row.event_id for row in rows]),
                    OutboxEvent.sent_at.is_(None),
                )
            ).all()
        if not left:
            break
    relay.close()

    received = read_topic(kafka_broker.bootstrap_servers, topic, expect=len(rows))
    mine = [m for m in received if m.headers["laminar_tenant"] == tenant.name]
    by_key: dict[str, list[str]] = {}
    for message in sorted(mine, key=lambda m: (m.partition, m.offset)):
        by_key.setdefault(message.key, []).append(message.headers["ce_id"])
    assert by_key == expected
    types = []
    for message in mine:
        body = json.loads(message.value)
        jsonschema_rs.validate(event_json_schema(EventType(body["type"])), body)
        if message.key == run_id:
            types.append(body["type"])
            assert body["data"]["run_id"] == run_id and body["data"]["actor"] == "ci"
    assert "PIPELINE_CREATED" in {json.loads(m.value)["type"] for m in mine}
    assert types.count("PIPELINE_STEP_RETRYING") == 2 and "PIPELINE_SUCCEEDED" in types
