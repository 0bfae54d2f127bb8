"""The events relay against a real Kafka-protocol broker (Tansu), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict

import jsonschema_rs
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from pipeline_service.events.broker import EmbeddedBroker
from pipeline_service.events.metrics import RelayMetrics
from pipeline_service.events.relay import EventRelay
from pipeline_service.settings import ServiceSettings
from schemas.event_docs import event_json_schema
from schemas.events import EventType
from tests.integration.kafka_events import (
    make_tenant,
    pending,
    read_topic,
    write_run_events,
)


def _relay(engine: Engine, broker: EmbeddedBroker, topic: str, **kwargs: object) -> EventRelay:
    settings = ServiceSettings(
        database_url=str(engine.url),
        kafka_bootstrap_servers=broker.bootstrap_servers,
        events_topic=topic,
        kafka_config={"message.timeout.ms": 3000, "log_level": 2},
    )
    return EventRelay(engine, settings, **kwargs)  # type: ignore[arg-type]


def _drain(relay: EventRelay, engine: Engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pending(engine) and time.monotonic() < deadline:
        relay.publish_round()
    assert pending(engine) == 0


def _by_key(received: list) -> dict[str, list[str]]:  # type: ignore[type-arg]
    order: dict[str, list[str]] = defaultdict(list)
    for message in sorted(received, key=lambda m: (m.partition, m.offset)):
        order[message.key].append(message.headers["ce_id"])
    return order


def test_run_events_arrive_in_order_with_keys_headers_and_schema(
    db_engine: Engine, kafka_broker: EmbeddedBroker
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    tenant = make_tenant(db_engine)
    registry = CollectorRegistry()
    relay = _relay(db_engine, kafka_broker, topic, metrics=RelayMetrics(registry))
    written = {f"r-{i}-{uuid.uuid4().hex[:6]}": [] for i in range(4)}
    for run_id in written:
        written[run_id] = write_run_events(db_engine, tenant, run_id)
    relay.publish_round()  # the batch holds them all: nothing published before the round
    assert registry.get_sample_value("laminar_events_pending") >= 20
    assert registry.get_sample_value("laminar_events_relay_lag_seconds") > 0
    _drain(relay, db_engine)
    relay.publish_round()
    relay.close()
    assert registry.get_sample_value("laminar_events_pending") == 0
    assert registry.get_sample_value("laminar_events_relay_lag_seconds") == 0
    assert registry.get_sample_value("laminar_events_published_total") >= 20

    received = read_topic(kafka_broker.bootstrap_servers, topic, expect=20, tenant=tenant[1])
    assert len(received) == 20
    assert _by_key(received) == written  # keys are run ids; each run's events in order
    for message in received:
        body = json.loads(message.value)
        type = EventType(message.headers["ce_type"])
        jsonschema_rs.validate(event_json_schema(type), body)
        assert body["id"] == message.headers["ce_id"]
        assert message.headers["laminar_tenant"] == tenant[1] == body["data"]["tenant"]
        assert message.headers["content-type"] == "application/cloudevents+json"
        assert body["subject"] == message.key


def test_broker_down_then_up_every_event_arrives(
    db_engine: Engine, kafka_broker: EmbeddedBroker
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    tenant = make_tenant(db_engine)
    relay = _relay(db_engine, kafka_broker, topic)
    written = {f"warm-{uuid.uuid4().hex[:6]}": []}  # the topic exists before the outage
    for run_id in written:
        written[run_id] = write_run_events(db_engine, tenant, run_id)
    _drain(relay, db_engine)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    kafka_broker.stop()
    try:
        for i in range(20):  # writers never wait for Kafka
            run_id = f"r-{i}-{uuid.uuid4().hex[:6]}"
            written[run_id] = write_run_events(db_engine, tenant, run_id)
        time.sleep(2)
        assert pending(db_engine) >= 100  # nothing marked sent while the broker is down
    finally:
        kafka_broker.start()  # in memory: the restarted broker has lost the topic
    deadline = time.monotonic() + 60
    while pending(db_engine) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    thread.join(30)
    assert pending(db_engine) == 0

    received = read_topic(kafka_broker.bootstrap_servers, topic, expect=100, tenant=tenant[1])
    arrived = _by_key(received)
    # The warm-up run's events went down with the broker; every event written since arrived.
    for run_id, ids in list(written.items())[1:]:
        first_seen = list(dict.fromkeys(arrived[run_id]))
        assert first_seen == ids, run_id  # none lost, in order; duplicates share an id
    bodies = {json.loads(m.value)["id"]: m.value for m in received}
    for message in received:
        assert bodies[message.headers["ce_id"]] == message.value


@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
def test_two_relays_publish_each_event_once_in_order(
    db_engine: Engine, kafka_broker: EmbeddedBroker
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    tenant = make_tenant(db_engine)
    relays = [_relay(db_engine, kafka_broker, topic) for _ in range(2)]
    stop = threading.Event()
    threads = [threading.Thread(target=r.run, args=(stop,), daemon=True) for r in relays]
    for thread in threads:
        thread.start()
    written: dict[str, list[str]] = {}
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(5):
            run_id = f"r-{n}-{i}-{uuid.uuid4().hex[:6]}"
            ids = write_run_events(db_engine, tenant, run_id)
            with lock:
                written[run_id] = ids

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    deadline = time.monotonic() + 60
    while pending(db_engine) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert pending(db_engine) == 0

    received = read_topic(kafka_broker.bootstrap_servers, topic, expect=100, tenant=tenant[1])
    assert len(received) == 100  # every event exactly once
    assert _by_key(received) == written
