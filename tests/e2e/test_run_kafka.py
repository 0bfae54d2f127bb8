"""`laminar run --kafka`: the pipeline cluster relays its lifecycle events to a Kafka broker
(the session's Tansu broker, or one it starts itself with `--kafka embedded`)."""

from __future__ import annotations

import json
import re
import signal
import uuid
from pathlib import Path

import httpx
import jsonschema_rs
import psutil
from sqlalchemy import create_engine, select

from pipeline_service.db.models import OutboxEvent
from pipeline_service.events.broker import EmbeddedBroker
from pipeline_service.temporal.dev_server import free_port
from schemas.event_docs import event_json_schema
from schemas.events import EventType
from tests.e2e.conftest import EXAMPLES, Cli, api_up, wait_for
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
    assert _per_key([(m.key, m.headers["ce_id"]) for m in received]) == _per_key(stored)
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
    assert _per_key([(m.key, m.headers["ce_id"]) for m in received]) == _per_key(stored)
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


WAITING_PIPELINE = """\
name: outage
steps:
  - id: first
    type: sql
    sql: CREATE OR REPLACE TABLE outage_start AS SELECT 1 AS x
  - id: wait
    type: python
    script: wait.py
    depends_on: [first]
  - id: last
    type: sql
    depends_on: [wait]
    sql: CREATE OR REPLACE TABLE outage_end AS SELECT 1 AS x
"""


def _pending(state: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{state / 'laminar.db'}")
    try:
        with engine.connect() as connection:
            query = select(OutboxEvent.event_id).where(OutboxEvent.sent_at.is_(None))
            return list(connection.scalars(query))
    finally:
        engine.dispose()


def _per_key(events: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Event ids by key, in the order given (the topic orders per partition, so per key)."""
    by_key: dict[str, list[str]] = {}
    for key, event_id in events:
        by_key.setdefault(key, []).append(event_id)
    return by_key


def _run_ids(http: httpx.Client) -> dict[str, str]:
    return {run["id"]: run["status"] for run in http.get("/v1/runs").json()["items"]}


def test_broker_down_mid_run_the_runs_finish_and_every_event_arrives_once_in_order(
    cli: Cli, tmp_path: Path
) -> None:
    """The broker stops while a run's step runs; that run and three more started through the
    API finish meanwhile, their events wait in the outbox; the broker comes back (empty: Tansu
    keeps nothing across a restart) and every event arrives, once, in order per run."""
    (tmp_path / "outage.yaml").write_text(WAITING_PIPELINE)
    (tmp_path / "wait.py").write_text("import time\ntime.sleep(8)\n")
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        state, topic, http_port = tmp_path / "state", "outage-events", free_port()
        proc = cli.start(
            "run", "--no-ui", tmp_path / "outage.yaml", "--state-dir", state,
            "--kafka", broker.bootstrap_servers, "--http-port", str(http_port),
            env={"LAMINAR_EVENTS_TOPIC": topic},
        )  # fmt: skip
        base = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: (state / "api-key").exists(), 60, f"the API; said:\n{proc.output()}")
        # The key file is written before the server listens.
        wait_for(api_up(base, "/health/live"), 60, f"the API; said:\n{proc.output()}")
        key = (state / "api-key").read_text().strip()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:

            def waiting_and_sent() -> bool:
                runs = http.get("/v1/runs").json()["items"]
                if not runs:
                    return False
                steps = http.get(f"/v1/runs/{runs[0]['id']}").json()["steps"]
                running = {s["step_id"]: s["status"] for s in steps}.get("wait") == "RUNNING"
                return running and not _pending(state)

            wait_for(waiting_and_sent, 60, f"the wait step; laminar said:\n{proc.output()}")
            delivered = outbox_ids(state)
            before = read_topic(broker.bootstrap_servers, topic, expect=len(delivered))
            assert _per_key([(m.key, m.headers["ce_id"]) for m in before]) == _per_key(delivered)
            broker.stop()

            # Broker down: the run finishes, three more run through the API, nothing fails.
            wait_for(lambda: set(_run_ids(http).values()) == {"SUCCEEDED"}, 60, "the first run")
            for _ in range(3):
                assert http.post("/v1/pipelines/outage/runs", json={}).status_code == 201
            assert http.get("/health/ready").status_code == 200
            wait_for(
                lambda: list(_run_ids(http).values()) == ["SUCCEEDED"] * 4,
                90,
                f"the API's runs; laminar said:\n{proc.output()}",
            )
            waiting = _pending(state)
            assert len(waiting) >= 4 * 6, waiting  # 3 runs x 8 events + the first run's end

            broker.start()
            wait_for(lambda: not _pending(state), 60, f"the outbox to drain:\n{proc.output()}")
            stored = outbox_ids(state)
            after = read_topic(broker.bootstrap_servers, topic, expect=len(stored) - len(before))
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait(30).code == 0
    finally:
        broker.stop()
    received = [(m.key, m.headers["ce_id"]) for m in before + after]
    assert len(received) == len(set(received)), "an event arrived twice"
    assert sorted(received) == sorted(stored)  # every event, once
    assert _per_key(received) == _per_key(stored)  # in commit order per run
    types = check_events(before + after)
    assert types.count("PIPELINE_SUCCEEDED") == 4 and types.count("PIPELINE_QUEUED") == 4


def test_the_embedded_broker_dies_with_a_killed_laminar_run(cli: Cli, tmp_path: Path) -> None:
    """kill -9 of `laminar run --kafka embedded` leaves no broker behind (nothing else would
    ever stop it: its command line names no state dir)."""
    proc = cli.start(
        "run", "--no-ui", EXAMPLES / "handoff.yaml", "--state-dir", tmp_path / "state",
        "--kafka", "embedded",
    )  # fmt: skip
    wait_for(lambda: "(embedded" in proc.output(), 60, f"the broker; said:\n{proc.output()}")
    brokers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "tansu"]
    assert len(brokers) == 1
    proc.proc.kill()
    proc.proc.wait(10)
    _, alive = psutil.wait_procs(brokers, timeout=10)
    for survivor in alive:
        survivor.kill()
    assert not alive, "the embedded broker outlived laminar run"
