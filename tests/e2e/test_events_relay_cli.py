"""`laminar events relay` as a process: killed with SIGKILL between producing events and
marking them sent, its successor publishes them again (same ids): at least once, never zero."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from pipeline_service.db.models import OutboxEvent
from pipeline_service.events.broker import EmbeddedBroker
from tests.integration.kafka_events import make_tenant, pending, read_topic, write_run_events

LAMINAR = Path(sys.executable).parent / "laminar"


def _start_relay(
    engine: Engine, broker: EmbeddedBroker, topic: str, log: Path
) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LAMINAR_")} | {
        "LAMINAR_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "LAMINAR_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "LAMINAR_EVENTS_TOPIC": topic,
        "LAMINAR_KAFKA_CONFIG": json.dumps({"message.timeout.ms": 5000, "log_level": 2}),
    }
    return subprocess.Popen(
        [str(LAMINAR), "events", "relay"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
def test_relay_killed_between_produce_and_mark_sent(
    db_engine: Engine, kafka_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    tenant = make_tenant(db_engine)
    ids = write_run_events(db_engine, tenant, f"r-{uuid.uuid4().hex[:6]}")
    log = tmp_path / "relay.log"
    # Row locks on the outbox rows: the relay reads and produces them, then its UPDATE of
    # sent_at waits here, after Kafka acknowledged them.
    blocker = Session(db_engine)
    blocker.begin()
    blocker.scalars(
        select(OutboxEvent).where(OutboxEvent.event_id.in_(ids)).with_for_update()
    ).all()
    relay = _start_relay(db_engine, kafka_broker, topic, log)
    try:
        first = read_topic(
            kafka_broker.bootstrap_servers, topic, expect=len(ids), timeout=60, tenant=tenant[1]
        )
        assert [m.headers["ce_id"] for m in first] == ids, log.read_text()
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
    finally:
        blocker.rollback()
        blocker.close()
        if relay.poll() is None:
            relay.kill()
    assert pending(db_engine) >= len(ids)  # the kill came before mark-sent

    successor = _start_relay(db_engine, kafka_broker, topic, log)
    try:
        deadline = time.monotonic() + 30
        while pending(db_engine) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pending(db_engine) == 0, log.read_text()
        successor.send_signal(signal.SIGTERM)
        assert successor.wait(20) == 0, log.read_text()
    finally:
        if successor.poll() is None:
            successor.kill()
    received = [
        m.headers["ce_id"]
        for m in read_topic(
            kafka_broker.bootstrap_servers, topic, expect=2 * len(ids), tenant=tenant[1]
        )
    ]
    assert received == ids + ids  # twice, same ids, in order both times; none lost
