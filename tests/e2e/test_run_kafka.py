"""`laminar run --kafka`: the pipeline cluster relays its lifecycle events to a Kafka broker
(the session's Tansu broker, or one it starts itself with `--kafka embedded`)."""

from __future__ import annotations

import json
import re
import signal
import uuid
from pathlib import Path

import jsonschema_rs
import psutil
from sqlalchemy import create_engine, select

from pipeline_service.db.models import OutboxEvent
from pipeline_service.events.broker import EmbeddedBroker
from schemas.event_docs import event_json_schema
from schemas.events import EventType
from tests.e2e.conftest import EXAMPLES, Cli, wait_for
from tests.integration.kafka_events import Received, read_topic


def outbox_ids(state: Path) -> list[tuple[str, str]]:
    """(key, event id) of every event in the state dir's outbox, in commit order."""
    engine = create_engine(f"sqlite:///{state / 'laminar.db'}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(OutboxEvent.key, OutboxEvent.event_id).order_by(OutboxEvent.seq)
            )
            return [(row[0], row[1]) for row in rows]
    finally:
        engine.dispose()


def check_events(received: list[Received]) -> list[str]:
    """Every message is a schema-valid CloudEvent with its headers; returns the types."""
    types = []
    for message in received:
        body = json.loads(message.value)
        jsonschema_rs.validate(event_json_schema(EventType(body["type"])), body)
        assert message.headers["ce_id"] == body["id"] and message.headers["ce_type"] == body["type"]
        assert message.headers["laminar_tenant"] == "default"
        assert message.key == body["subject"] == body["data"]["run_id"]
        types.append(body["type"])
    return types


def test_laminar_run_relays_its_events_to_kafka(
    cli: Cli, tmp_path: Path, kafka_broker: EmbeddedBroker
) -> None:
    state, topic = tmp_path / "state", f"run-events-{uuid.uuid4().hex[:8]}"
    result = cli.run(
        "run", "--once", "--no-ui", EXAMPLES / "handoff.yaml", "--state-dir", state,
        "--kafka", kafka_broker.bootstrap_servers,
        env={"LAMINAR_EVENTS_TOPIC": topic},
    )  # fmt: skip
    assert result.code == 0, result.details
    assert f"kafka       {kafka_broker.bootstrap_servers}" in result.stdout, result.details
    assert "not delivered" not in result.output
    stored = outbox_ids(state)
    # The run's events, all delivered before `laminar run --once` exited.
    received = read_topic(kafka_broker.bootstrap_servers, topic, expect=len(stored))
    assert [(m.key, m.headers["ce_id"]) for m in received] == stored
    runs = [m for m in received if not m.key.startswith("pipeline:")]
    types = check_events(runs)
    assert types[0] == "PIPELINE_QUEUED" and types[1] == "PIPELINE_STARTED", types
    assert types[-1] == "PIPELINE_SUCCEEDED", types
    assert types.count("PIPELINE_STEP_COMPLETED") == 2, types


def test_laminar_run_kafka_embedded_starts_a_broker_a_consumer_can_read(
    cli: Cli, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    proc = cli.start(
        "run", "--no-ui", EXAMPLES / "handoff.yaml", "--state-dir", state, "--kafka", "embedded"
    )  # fmt: skip
    found: list[str] = []

    def announced() -> bool:
        found[:] = re.findall(r"kafka\s+(127\.0\.0\.1:\d+)\s+\(embedded", proc.output())
        return bool(found)

    wait_for(announced, 60, f"the embedded broker; laminar said:\n{proc.output()}")
    assert "in memory only" in proc.output()
    wait_for(
        lambda: "run SUCCEEDED" in proc.output(), 60, f"the run; laminar said:\n{proc.output()}"
    )
    stored = outbox_ids(state)
    received = read_topic(found[0], "laminar.pipeline-events", expect=len(stored), timeout=30)
    assert [(m.key, m.headers["ce_id"]) for m in received] == stored
    types = check_events([m for m in received if not m.key.startswith("pipeline:")])
    assert types[-1] == "PIPELINE_SUCCEEDED", types
    brokers = [
        p for p in psutil.Process(proc.proc.pid).children(recursive=True) if p.name() == "tansu"
    ]
    assert len(brokers) == 1
    proc.proc.send_signal(signal.SIGINT)
    result = proc.wait(30)
    assert result.code == 0, result.details
    assert not brokers[0].is_running() or brokers[0].status() == psutil.STATUS_ZOMBIE
