"""The events relay: publishes pending outbox rows to Kafka, in order, at least once.

One round: read the oldest pending rows, produce them (idempotent producer, `acks=all`), wait for
every delivery report, mark sent exactly the rows Kafka acknowledged. On PostgreSQL the round is
one transaction that takes the relay lock first, a transaction-scoped advisory lock, so any
number of relays may run: one round runs at a time, the next round (on whichever relay gets the
lock) starts from the first row still pending, and a relay that dies mid-round loses
the lock with its connection. That keeps per-key order (unlike SKIP LOCKED over rows, which lets
a second relay publish event 4 of a run while the first still holds 1-3) and fails over with
no lease to expire. SQLite has no such lock: run a single relay there (the embedded shape); its
round is three short transactions (read, produce outside any, mark sent), because a SQLite
transaction here holds the write lock and a broker outage would hold it for the produce timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.orm import Session

from pipeline_service.db.models import OutboxEvent, Tenant
from pipeline_service.events.feed import to_event
from pipeline_service.events.metrics import RelayMetrics
from pipeline_service.settings import ServiceSettings
from schemas.events import CONTENT_TYPE

log = logging.getLogger(__name__)

# Arbitrary but fixed: every relay of one database contends for this advisory lock key.
RELAY_LOCK_KEY = 0x4C414D494E4152  # "LAMINAR"

# Bounded so a round during a broker outage ends, backs off, and re-reads the outbox.
DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 15_000,
    "socket.timeout.ms": 5_000,
    "reconnect.backoff.max.ms": 1_000,
}


def producer_config(settings: ServiceSettings) -> dict[str, Any]:
    if not settings.kafka_bootstrap_servers:
        raise ValueError("LAMINAR_KAFKA_BOOTSTRAP_SERVERS is not set")
    config = {**DEFAULT_PRODUCER_CONFIG, **settings.kafka_config}
    # The guarantees the relay is built on are not configurable.
    config.update(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    return config


@dataclass
class RoundResult:
    selected: int = 0
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class EventRelay:
    """Publishes the outbox of `engine` to `settings.events_topic`."""

    def __init__(
        self,
        engine: Engine,
        settings: ServiceSettings,
        *,
        metrics: RelayMetrics | None = None,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.topic = settings.events_topic
        self.retention = retention
        self.config = producer_config(settings)
        self.producer = Producer(self.config)
        admin_config = {
            key: value
            for key, value in self.config.items()
            if key.startswith(("bootstrap.", "security.", "sasl.", "ssl.", "client."))
        }
        self.admin = AdminClient(admin_config)
        self._is_postgres = engine.dialect.name == "postgresql"
        self._topic_ready = False
        self._last_prune = 0.0

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop` is set; back off (up to 10 s) while Kafka fails."""
        backoff = 0.0
        poll = self.settings.relay_poll_interval.total_seconds()
        while not stop.is_set():
            try:
                result = self.publish_round()
            except Exception as exc:  # the database or Kafka is unreachable: keep trying
                log.warning("events relay round failed: %s", exc)
                result = RoundResult(failed=1, errors=[str(exc)])
            if result.failed:
                self._reset_after_failure()
                backoff = min(10.0, max(0.2, backoff * 2))
                log.warning(
                    "events relay: %d of %d events not delivered (%s); retrying in %.1f s",
                    result.failed,
                    result.selected,
                    "; ".join(sorted(set(result.errors))[:3]),
                    backoff,
                )
                stop.wait(backoff)
                continue
            backoff = 0.0
            self._maybe_prune()
            if result.selected < self.settings.relay_batch_size:
                stop.wait(poll)
        self.producer.flush(5)

    def publish_round(self) -> RoundResult:
        """One round; returns what it published."""
        if self._is_postgres:
            # One transaction holding the relay lock: no other relay publishes meanwhile.
            # PostgreSQL readers and writers of other rows do not wait for it.
            with Session(self.engine) as session, session.begin():
                if not session.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RELAY_LOCK_KEY}
                ):
                    return RoundResult()  # another relay is publishing right now
                rows = self._pending_rows(session)
                result, sent = self._publish(rows)
                self._mark_sent(session, sent)
        else:
            # SQLite: every transaction here takes the database's write lock (BEGIN
            # IMMEDIATE), so one held while Kafka answers — up to message.timeout.ms when it
            # is down — would stall the API and run recording. One relay runs on SQLite, so
            # read, produce and mark sent in separate short transactions.
            with Session(self.engine, expire_on_commit=False) as session:
                with session.begin():
                    rows = self._pending_rows(session)
                result, sent = self._publish(rows)
                if sent:
                    with session.begin():
                        self._mark_sent(session, sent)
        if self.metrics is not None:
            self.metrics.published.inc(result.sent)
            self.metrics.failed.inc(result.failed)
        return result

    def _pending_rows(self, session: Session) -> list[tuple[OutboxEvent, str]]:
        rows = session.execute(
            select(OutboxEvent, Tenant.name)
            .join(Tenant, Tenant.id == OutboxEvent.tenant_id)
            .where(OutboxEvent.sent_at.is_(None))
            .order_by(OutboxEvent.seq)
            .limit(self.settings.relay_batch_size)
        ).all()
        self._observe_backlog(session)
        return [(row, tenant) for row, tenant in rows]

    def _publish(self, rows: list[tuple[OutboxEvent, str]]) -> tuple[RoundResult, list[int]]:
        """Produce `rows`; the result and the seqs that may be marked sent."""
        if not rows:
            return RoundResult(), []
        self._ensure_topic()
        delivered = self._produce(rows)
        sent = _in_order_prefix_per_key([row for row, _ in rows], delivered)
        result = RoundResult(
            selected=len(rows),
            sent=len(sent),
            failed=len(rows) - len(sent),
            errors=[error for error in delivered.values() if error],
        )
        return result, sent

    @staticmethod
    def _mark_sent(session: Session, sent: list[int]) -> None:
        if sent:
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.seq.in_(sent))
                .values(sent_at=datetime.now(UTC))
            )

    # -- Kafka ------------------------------------------------------------------------------

    def _produce(self, rows: list[tuple[OutboxEvent, str]]) -> dict[int, str | None]:
        """Produce every row and wait for all delivery reports: seq -> error (None = sent)."""
        reports: dict[int, str | None] = {}

        def report_for(seq: int) -> Any:
            def on_delivery(error: KafkaError | None, _message: Message) -> None:
                reports[seq] = None if error is None else str(error)

            return on_delivery

        produced: list[int] = []
        for row, tenant in rows:
            event = to_event(row, tenant)
            try:
                self.producer.produce(
                    self.topic,
                    key=row.key.encode(),
                    value=event.model_dump_json().encode(),
                    headers=[
                        ("ce_type", event.type.value.encode()),
                        ("ce_id", event.id.encode()),
                        ("ce_specversion", b"1.0"),
                        ("laminar_tenant", tenant.encode()),
                        ("content-type", CONTENT_TYPE.encode()),
                    ],
                    on_delivery=report_for(row.seq),
                )
                produced.append(row.seq)
            except (BufferError, KafkaException) as exc:
                # The local queue is full or the producer is in a fatal state: stop here, the
                # rest of the batch waits for the next round (order is kept by the prefix rule).
                reports[row.seq] = str(exc)
                break
        # Every produced message gets a report by message.timeout.ms at the latest.
        deadline = time.monotonic() + self.config["message.timeout.ms"] / 1000 + 5
        while any(seq not in reports for seq in produced) and time.monotonic() < deadline:
            self.producer.poll(0.05)
        return reports

    def _ensure_topic(self) -> None:
        if self._topic_ready:
            return
        futures = self.admin.create_topics([NewTopic(self.topic, num_partitions=3)])
        try:
            futures[self.topic].result(timeout=10)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        self._topic_ready = True

    # -- housekeeping -----------------------------------------------------------------------

    def _observe_backlog(self, session: Session) -> None:
        if self.metrics is None:
            return
        count, oldest = session.execute(
            select(func.count(), func.min(OutboxEvent.created_at)).where(
                OutboxEvent.sent_at.is_(None)
            )
        ).one()
        self.metrics.pending.set(count)
        self.metrics.lag.set(
            0.0 if oldest is None else max(0.0, (datetime.now(UTC) - _utc(oldest)).total_seconds())
        )

    def _maybe_prune(self) -> None:
        """Delete sent rows older than the retention, once a minute."""
        if time.monotonic() - self._last_prune < 60:
            return
        self._last_prune = time.monotonic()
        with Session(self.engine) as session, session.begin():
            session.execute(
                delete(OutboxEvent).where(
                    OutboxEvent.sent_at.is_not(None),
                    OutboxEvent.created_at < datetime.now(UTC) - self.retention,
                )
            )

    def _reset_after_failure(self) -> None:
        """A restarted broker may have lost the topic (Tansu keeps it in memory) and no longer
        knows the idempotent producer's id: start a fresh producer, check the topic again."""
        self._topic_ready = False
        old, self.producer = self.producer, Producer(self.config)
        try:
            old.purge()
            old.flush(0)
        except Exception as exc:
            log.debug("discarding the old producer: %s", exc)

    def close(self) -> None:
        self.producer.flush(5)


def _in_order_prefix_per_key(rows: list[OutboxEvent], reports: dict[int, str | None]) -> list[int]:
    """The rows that may be marked sent: per key, those before its first unacknowledged row.
    A later row of a key that failed stays pending too and is published again after the failed
    one (a duplicate with the same id), so a consumer never sees a key's events out of order
    without seeing them again in order."""
    blocked: set[str] = set()
    sent = []
    for row in rows:
        if row.key in blocked:
            continue
        if row.seq in reports and reports[row.seq] is None:
            sent.append(row.seq)
        else:
            blocked.add(row.key)
    return sent


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
