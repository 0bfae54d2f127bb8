"""`laminar worker` consumes the tenants' Kafka triggers (no `laminar events triggers` process):
a server and a worker as processes on PostgreSQL, the Tansu broker, and a tenant whose trigger
is created after the worker started (picked up without a restart). A message starts one run;
the same message delivered again (the tenant's group offset moved back to the start while the
worker was stopped, then the worker restarted) starts no second run."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline_service.events.broker import EmbeddedBroker
from pipeline_service.temporal.dev_server import DevServer
from tests.e2e.conftest import Background, Cli, running_platform, wait_for

pytestmark = pytest.mark.slow
# Tansu settles a group join after about the poll interval: keep it short for the test.
KAFKA_CONFIG = {"session.timeout.ms": 6000, "max.poll.interval.ms": 10000}


def produce(bootstrap: str, topic: str, document: dict[str, Any]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, json.dumps(document).encode(), key=b"orders")  # one partition
    assert producer.flush(10) == 0


def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (-1001: none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in sorted(partitions)], timeout=10
        )
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def rewind(bootstrap: str, group: str, topic: str) -> None:
    """Move the group's offsets back to the start (as a lost commit would leave them)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.commit(
            offsets=[TopicPartition(topic, p, 0) for p in sorted(partitions)], asynchronous=False
        )
    finally:
        consumer.close()


def stop(process: Background) -> None:
    process.proc.send_signal(signal.SIGINT)
    result = process.wait(60)
    assert "Traceback" not in result.output, result.details


def test_the_worker_consumes_triggers_once_per_message(
    cli: Cli, dev_server: DevServer, tmp_path: Path, kafka_broker: EmbeddedBroker
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    kafka = {
        "LAMINAR_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LAMINAR_EVENTS_TOPIC": f"e2e-trigger-events-{topic}",
        "LAMINAR_KAFKA_CONFIG": json.dumps(KAFKA_CONFIG),
        "LAMINAR_TRIGGERS_REFRESH": "1s",
    }
    with running_platform(cli, dev_server.address, tmp_path, ("w1",), kafka) as platform:
        worker = platform.workers["w1"]
        with platform.http() as http:
            # The tenant and its trigger appear while the worker runs.
            created = http.post(
                "/v1/pipelines",
                json={
                    "definition": {
                        "name": "on-order",
                        "params": {"order_id": ""},
                        "triggers": [
                            {"kafka": {"topic": topic, "params_from": {"order_id": "$.id"}}}
                        ],
                        "steps": [{"id": "a", "type": "noop"}],
                    }
                },
            )
            assert created.status_code == 201, created.text
            produce(bootstrap, topic, {"id": "o1"})

            def runs() -> list[dict[str, Any]]:
                found = http.get("/v1/runs", params={"pipeline": "on-order"}).json()["items"]
                return sorted(found, key=lambda r: r["created_at"])

            def succeeded(count: int) -> bool:
                done = [r for r in runs() if r["status"] == "SUCCEEDED"]
                return len(done) >= count

            wait_for(lambda: succeeded(1), 90, f"the run of o1; worker said:\n{worker.output()}")
            [first] = runs()
            assert first["params"] == {"order_id": "o1"} and first["trigger"] == "event", first
            group = "laminar-triggers-acme"
            wait_for(
                lambda: max(group_offsets(bootstrap, group, topic).values()) == 1,
                30,
                "the offset commit",
            )
            stop(worker)
            rewind(bootstrap, group, topic)
            assert max(group_offsets(bootstrap, group, topic).values()) == 0
            produce(bootstrap, topic, {"id": "o2"})
            worker = platform.start_worker("w1")
            # o1 is read again before o2 (one partition, from offset 0).
            wait_for(lambda: succeeded(2), 90, f"the run of o2; worker said:\n{worker.output()}")
            wait_for(
                lambda: max(group_offsets(bootstrap, group, topic).values()) == 2,
                30,
                "both messages consumed again",
            )
            params = [r["params"]["order_id"] for r in runs()]
            assert params == ["o1", "o2"], runs()  # the redelivered o1 started no second run
            stop(worker)
        stop(platform.server)
