"""Kafka event triggers: a message on a topic named in a pipeline's `triggers` starts a run of
it, with params taken from the message by JSONPath.

At least once, and never two runs for one message: a run's idempotency key is derived from the
message (`kafka:{topic}:{partition}:{offset}`, or the value of the trigger's `key_field`), so
a message delivered again names the run it started; the offset is committed only after every
run it starts was accepted by the launcher. One consumer group per tenant
(`laminar-triggers-{tenant}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from jsonpath_ng.ext.parser import parse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from pipeline_service.db.models import Tenant
from pipeline_service.db.pipelines import current_definitions
from pipeline_service.db.tenants import get_tenant
from pipeline_service.launcher import Launch, LaunchRequest, StartPath
from schemas.pipeline import EventTrigger, KafkaTrigger
from schemas.run import Trigger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subscription:
    pipeline: str
    trigger: KafkaTrigger


def _found(path: str, document: Any) -> list[Any]:
    return [match.value for match in parse(path).find(document)]


def matches(trigger: KafkaTrigger, document: Any) -> bool:
    if trigger.filter is None:
        return True
    # jsonpath-ng applies `[?(...)]` to arrays only: a filter sees the message as [message].
    target = [document] if trigger.filter.replace(" ", "").startswith("$[?") else document
    return any(value not in (None, False, "", [], {}) for value in _found(trigger.filter, target))


def params_of(trigger: KafkaTrigger, document: Any) -> dict[str, Any]:
    params = {}
    for name, path in trigger.params_from.items():
        values = _found(path, document)
        if values:
            params[name] = values[0]
    return params


def idempotency_key(trigger: KafkaTrigger, message: Message, document: Any) -> str:
    if trigger.key_field is not None:
        values = _found(trigger.key_field, document)
        if values:
            return f"kafka:{trigger.topic}:key:{values[0]}"
    return f"kafka:{message.topic()}:{message.partition()}:{message.offset()}"


class TriggerConsumer(StartPath):
    """Starts the runs that one tenant's Kafka triggers ask for."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        temporal: Client,
        *,
        tenant: str,
        bootstrap_servers: str,
        task_queue: str,
        source_dir: Path,
        kafka_config: dict[str, Any] | None = None,
        before_commit: Callable[[Message], None] | None = None,
    ) -> None:
        super().__init__(sessions, temporal, task_queue=task_queue, source_dir=source_dir)
        self.tenant = tenant
        self.before_commit = before_commit
        self.consumer = Consumer(
            {
                # A message is handled in well under a second (the launcher records the run and
                # starts its workflow): a short poll interval makes group joins quick.
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "max.poll.interval.ms": 30_000,
                **(kafka_config or {}),
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"laminar-triggers-{tenant}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self.subscriptions: dict[str, list[Subscription]] = {}
        self.started: list[Launch] = []

    def refresh(self) -> None:
        """Read the tenant's triggers and subscribe to their topics."""
        with self.sessions() as session:
            tenant = get_tenant(session, self.tenant)
            found: dict[str, list[Subscription]] = {}
            if tenant is not None:
                for name, definition in current_definitions(session, tenant.id):
                    for raw in definition.get("triggers") or []:
                        kafka = EventTrigger.model_validate(raw).kafka
                        found.setdefault(kafka.topic, []).append(Subscription(name, kafka))
        if set(found) != set(self.subscriptions) and found:
            self.consumer.subscribe(sorted(found))
        self.subscriptions = found

    async def poll(self, timeout: float = 1.0) -> int:
        """Handle at most one message; the number of runs it started (or named again)."""
        message = await anyio.to_thread.run_sync(self.consumer.poll, timeout)
        if message is None:
            return 0
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("trigger consumer: %s", error)
            return 0
        try:
            launches = await self._handle(message)
        except Exception:
            # Not accepted: read the message again (after a pause), never skip it.
            self.consumer.seek(
                TopicPartition(
                    str(message.topic()), message.partition() or 0, message.offset() or 0
                )
            )
            await asyncio.sleep(1)
            raise
        if self.before_commit is not None:
            self.before_commit(message)
        await anyio.to_thread.run_sync(
            lambda: self.consumer.commit(message=message, asynchronous=False)
        )
        return len(launches)

    async def _handle(self, message: Message) -> list[Launch]:
        try:
            document = json.loads(message.value() or b"null")
        except ValueError:
            log.warning(
                "trigger consumer: %s@%s is not JSON; skipped", message.topic(), message.offset()
            )
            return []
        tenant = await self.find_tenant(self.tenant)
        launches = []
        for subscription in self.subscriptions.get(str(message.topic()), []):
            trigger = subscription.trigger
            if tenant is None or not matches(trigger, document):
                continue
            request = LaunchRequest(
                tenant=tenant,
                pipeline=subscription.pipeline,
                actor=f"trigger:{message.topic()}",
                params=params_of(trigger, document),
                idempotency_key=idempotency_key(trigger, message, document),
                trigger=Trigger.EVENT,
            )
            launch = await self.launch(request)
            if isinstance(launch, str):
                # A paused pipeline, params that do not fit: this message cannot start it.
                log.warning(
                    "trigger %s -> %s refused: %s", message.topic(), subscription.pipeline, launch
                )
                continue
            launches.append(launch)
            self.started.append(launch)
        return launches

    async def run(self, stop: asyncio.Event, refresh_every: float = 30) -> None:
        """Until `stop` is set; re-reads the triggers every `refresh_every` seconds."""
        refreshed = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if loop.time() - refreshed > refresh_every:
                await anyio.to_thread.run_sync(self.refresh)
                refreshed = loop.time()
            if not self.subscriptions:
                await asyncio.sleep(1)
                continue
            try:
                await self.poll(0.5)
            except Exception:
                log.exception("trigger consumer: a message could not start its runs; retrying")

    def close(self) -> None:
        self.consumer.close()


def tenants_with_triggers(sessions: sessionmaker[Session]) -> set[str]:
    """The tenants whose current (non-archived) pipelines have a Kafka trigger."""
    with sessions() as session:
        found = set()
        for tenant in session.scalars(select(Tenant)).all():
            if any(
                definition.get("triggers")
                for _, definition in current_definitions(session, tenant.id)
            ):
                found.add(tenant.name)
        return found


class TenantTriggers:
    """A `laminar worker`'s trigger consumers: one TriggerConsumer (consumer group
    `laminar-triggers-{tenant}`) per tenant whose pipelines have Kafka triggers, found again
    every `refresh_every`, so a tenant's first trigger is picked up without a restart. Several
    workers share each tenant's group: Kafka splits the partitions among them."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        temporal: Client,
        *,
        bootstrap_servers: str,
        task_queue: str,
        source_dir: Path,
        kafka_config: dict[str, Any] | None = None,
        refresh_every: float = 30,
    ) -> None:
        self.sessions, self.temporal = sessions, temporal
        self.bootstrap_servers, self.task_queue = bootstrap_servers, task_queue
        self.source_dir, self.kafka_config = source_dir, kafka_config
        self.refresh_every = refresh_every
        self.consumers: dict[str, tuple[TriggerConsumer, asyncio.Event, asyncio.Task[None]]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    wanted = await anyio.to_thread.run_sync(tenants_with_triggers, self.sessions)
                except Exception:  # the database is away for a moment: keep what runs
                    log.exception("trigger consumers: could not read the tenants' triggers")
                    wanted = set(self.consumers)
                for tenant in sorted(wanted - set(self.consumers)):
                    self._start(tenant)
                for tenant in sorted(set(self.consumers) - wanted):
                    await self._stop(tenant)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.refresh_every)
        finally:
            for tenant in list(self.consumers):
                await self._stop(tenant)

    def _start(self, tenant: str) -> None:
        consumer = TriggerConsumer(
            self.sessions,
            self.temporal,
            tenant=tenant,
            bootstrap_servers=self.bootstrap_servers,
            task_queue=self.task_queue,
            source_dir=self.source_dir,
            kafka_config=self.kafka_config,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(
            consumer.run(stop, refresh_every=self.refresh_every), name=f"triggers-{tenant}"
        )
        self.consumers[tenant] = (consumer, stop, task)
        log.info(
            "trigger consumer started for tenant %s (group laminar-triggers-%s)", tenant, tenant
        )

    async def _stop(self, tenant: str) -> None:
        consumer, stop, task = self.consumers.pop(tenant)
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        await anyio.to_thread.run_sync(consumer.close)  # leaves the group at once
        log.info("trigger consumer stopped for tenant %s", tenant)
