"""Kafka event triggers against the Tansu broker: a message starts a run with params from it
(filtered by JSONPath); a message delivered again after a crash between the run's acceptance
and the offset commit starts no second run; a key field makes one run per key."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from temporalio.client import Client

from pipeline_service.events.broker import EmbeddedBroker
from pipeline_service.events.triggers import TriggerConsumer
from tests.service.conftest import EXAMPLES, Service, Tenant


class Crash(Exception):
    pass


def produce(bootstrap: str, topic: str, documents: list[dict[str, Any]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for document in documents:
        # One key: one partition, so the messages arrive in this order.
        producer.produce(topic, json.dumps(document).encode(), key=b"orders")
    assert producer.flush(10) == 0


async def runs_of(tenant: Tenant, name: str) -> list[dict[str, Any]]:
    response = await tenant.http.get("/v1/runs", params={"pipeline": name})
    assert response.status_code == 200, response.text
    return sorted(response.json()["items"], key=lambda r: r["created_at"])


async def test_messages_start_runs_once(
    service: Service, client: Client, kafka_broker: EmbeddedBroker
) -> None:
    tenant = await service.tenant()
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    trigger: dict[str, Any] = {
        "topic": topic,
        "filter": "$[?(@.status == 'paid')]",
        "params_from": {"order_id": "$.id"},
    }
    await tenant.apply(
        {
            "name": "on-order",
            "params": {"order_id": ""},
            "triggers": [{"kafka": trigger}],
            "steps": [{"id": "a", "type": "noop"}],
        }
    )
    await tenant.apply(
        {
            "name": "by-key",
            "triggers": [{"kafka": {"topic": topic, "key_field": "$.id"}}],
            "steps": [{"id": "a", "type": "noop"}],
        }
    )
    bootstrap = kafka_broker.bootstrap_servers
    produce(
        bootstrap,
        topic,
        [
            {"id": "o1", "status": "paid"},
            {"id": "o2", "status": "open"},
            {"id": "o1", "status": "paid"},  # the same order again: a new message
        ],
    )

    def crash_before_commit(message: Message) -> None:
        raise Crash(f"crashed before committing offset {message.offset()}")

    def consumer(hook: Any = None) -> TriggerConsumer:
        return TriggerConsumer(
            service.sessions,
            client,
            tenant=tenant.name,
            bootstrap_servers=bootstrap,
            task_queue=service.settings.task_queue,
            source_dir=EXAMPLES,
            before_commit=hook,
            # Quick group joins (Tansu waits about the poll interval for a join to settle).
            kafka_config={"session.timeout.ms": 6000, "max.poll.interval.ms": 10000},
        )

    first = consumer(crash_before_commit)
    first.refresh()
    try:
        with pytest.raises(Crash):
            for _ in range(60):
                await first.poll(0.5)
    finally:
        first.close()
    assert len(first.started) == 2  # o1 started both pipelines, then the process "died"
    assert [r["params"] for r in await runs_of(tenant, "on-order")] == [{"order_id": "o1"}]

    second = consumer()
    try:
        second.refresh()
        for _ in range(80):
            await second.poll(0.5)
            if sum(1 for launch in second.started) >= 4:
                break
    finally:
        second.close()
    # The redelivered first message named its runs again; none was created twice.
    assert [launch.created for launch in second.started][:2] == [False, False]
    orders = await runs_of(tenant, "on-order")
    assert [r["params"] for r in orders] == [{"order_id": "o1"}, {"order_id": "o1"}]
    assert {r["trigger"] for r in orders} == {"event"}
    assert {r["actor"] for r in orders} == {f"trigger:{topic}"}
    assert len({r["workflow_id"] for r in orders}) == 2
    # by-key: o1 twice and o2 once: one run per key.
    keyed = await runs_of(tenant, "by-key")
    assert sorted(r["workflow_id"].rsplit(":", 1)[-1] for r in keyed) == ["o1", "o2"]
