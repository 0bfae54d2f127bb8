"""Helpers of the events tests: write outbox rows as the service does, read a topic back."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from pipeline_service.db.models import OutboxEvent, Tenant
from pipeline_service.db.outbox import add_event
from schemas.events import EventType

RUN_SEQUENCE = [
    EventType.PIPELINE_QUEUED,
    EventType.PIPELINE_STARTED,
    EventType.PIPELINE_STEP_STARTED,
    EventType.PIPELINE_STEP_COMPLETED,
    EventType.PIPELINE_SUCCEEDED,
]


def make_tenant(engine: Engine) -> tuple[int, str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    with Session(engine) as session, session.begin():
        tenant = Tenant(name=name, created_by="test")
        session.add(tenant)
        session.flush()
        return tenant.id, name


def write_run_events(engine: Engine, tenant: tuple[int, str], run_id: str) -> list[str]:
    """A run's lifecycle, one transaction per transition (as record_run_events commits them)."""
    ids = []
    for type in RUN_SEQUENCE:
        payload: dict[str, Any] = {
            "tenant": tenant[1],
            "pipeline": "sales",
            "version": 1,
            "run_id": run_id,
            "workflow_id": f"{tenant[1]}/sales/{run_id}",
            "logical_date": "2026-11-24T00:00:00+00:00",
            "status": type.value.removeprefix("PIPELINE_"),
        }
        if type.startswith("PIPELINE_STEP_"):
            payload |= {"step_id": "load", "step_type": "sql", "attempt": 1}
        with Session(engine) as session, session.begin():
            row = add_event(
                session, tenant_id=tenant[0], key=run_id, type=type, actor="ci", payload=payload
            )
            ids.append(row.event_id)
    return ids


def pending(engine: Engine) -> int:
    with Session(engine) as session:
        return (
            session.scalar(
                select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None))
            )
            or 0
        )


@dataclass
class Received:
    key: str
    headers: dict[str, str]
    value: bytes
    partition: int
    offset: int


def read_topic(
    bootstrap: str, topic: str, expect: int, timeout: float = 30, tenant: str | None = None
) -> list[Received]:
    """Every message of `topic` (of `tenant`: the session's databases hold other tests' rows
    too) from the beginning (assign(), no group join), once at least `expect` arrived and the
    topic stayed quiet a moment."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    received: list[Received] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                if len(received) >= expect and time.monotonic() - quiet_since > 1:
                    break
                continue
            quiet_since = time.monotonic()
            headers = {k: (v or b"").decode() for k, v in message.headers() or []}
            if tenant is not None and headers.get("laminar_tenant") != tenant:
                continue
            received.append(
                Received(
                    key=(message.key() or b"").decode(),
                    headers=headers,
                    value=message.value() or b"",
                    partition=message.partition() or 0,
                    offset=message.offset() or 0,
                )
            )
    finally:
        consumer.close()
    return received
