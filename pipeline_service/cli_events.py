"""`laminar events relay`: the outbox-to-Kafka relay as a process of its own (`laminar worker`
also runs one when LAMINAR_KAFKA_BOOTSTRAP_SERVERS is set); `laminar events tail`: follow the
events through the API, or on the topic with --kafka."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer

from pipeline_service.cli_client import DEFAULT_URL, Api, Key, Url
from pipeline_service.cli_service import (
    _connect_temporal,
    _fail,
    _settings,
    console,
    service_settings,
)
from pipeline_service.events.metrics import RelayMetrics
from pipeline_service.settings import ServiceSettings

events_app = typer.Typer(help="Lifecycle events (the outbox and its Kafka relay).")


@events_app.command("relay")
def relay(
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve the relay's /metrics (pending rows, lag) here.")
    ] = None,
) -> None:
    """Publish pending outbox rows of LAMINAR_DATABASE_URL to LAMINAR_EVENTS_TOPIC until stopped.
    Any number may run against PostgreSQL (one publishes at a time); one against SQLite."""
    from pipeline_service.db.session import make_engine
    from pipeline_service.events.relay import EventRelay

    settings = service_settings()
    if not settings.kafka_bootstrap_servers:
        raise _fail("LAMINAR_KAFKA_BOOTSTRAP_SERVERS is not set: there is no Kafka to relay to")
    engine = make_engine(settings.database_url)
    try:
        event_relay = EventRelay(engine, settings, metrics=_serve_metrics(settings, metrics_port))
    except Exception as exc:
        raise _fail(f"cannot start the events relay: {exc}") from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    console.print(
        f"laminar events relay: {engine.url!r} -> {settings.kafka_bootstrap_servers} "
        f"topic {settings.events_topic}; Ctrl-C stops"
    )
    try:
        event_relay.run(stop)
    finally:
        engine.dispose()


@events_app.command("triggers")
def triggers(
    tenant: Annotated[str, typer.Option(help="The tenant whose pipelines' Kafka triggers to run.")],
) -> None:
    """Start the runs that the tenant's Kafka `triggers` ask for, until stopped (one consumer
    group per tenant: `laminar-triggers-<tenant>`)."""
    import asyncio

    settings = service_settings()
    if not settings.kafka_bootstrap_servers:
        raise _fail("LAMINAR_KAFKA_BOOTSTRAP_SERVERS is not set: there is no Kafka to read")
    try:
        asyncio.run(_triggers(settings, tenant))
    except ConnectionError as exc:
        raise _fail(str(exc)) from None


async def _triggers(settings: ServiceSettings, tenant: str) -> None:
    import asyncio

    from pipeline_service.db.session import make_engine, session_factory
    from pipeline_service.events.triggers import TriggerConsumer

    temporal = await _connect_temporal(settings)
    engine = make_engine(settings.database_url)
    assert settings.kafka_bootstrap_servers is not None
    consumer = TriggerConsumer(
        session_factory(engine),
        temporal,
        tenant=tenant,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        task_queue=settings.task_queue,
        source_dir=settings.source_dir,
        kafka_config=dict(settings.kafka_config),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    console.print(f"laminar events triggers: tenant {tenant}; Ctrl-C stops")
    try:
        await consumer.run(stop)
    finally:
        consumer.close()
        engine.dispose()


@events_app.command("tail")
def tail(
    url: Url = DEFAULT_URL,
    api_key: Key = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Wait for more.")] = True,
    run: Annotated[str | None, typer.Option(help="Only this run's events (no follow).")] = None,
    kafka: Annotated[
        bool,
        typer.Option(
            "--kafka",
            help="Consume LAMINAR_EVENTS_TOPIC at LAMINAR_KAFKA_BOOTSTRAP_SERVERS (from the "
            "beginning) instead of reading the outbox through the API.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One CloudEvent JSON per line.")] = False,
) -> None:
    """Print lifecycle events as they are recorded: the tenant's outbox through the API
    (LAMINAR_URL, LAMINAR_API_KEY), or the Kafka topic with --kafka."""
    show = _print_json if as_json else _print_line
    if kafka:
        _tail_kafka(follow, show)
        return
    api = Api(url, api_key)
    if run is not None:
        for event in api.call("GET", f"/v1/runs/{run}/events"):
            show(event)
        return
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500, "wait": 20 if follow else 0}
        if cursor:
            params["after"] = cursor
        page = api.call("GET", "/v1/events", params=params, timeout=40)
        for event in page["events"]:
            show(event)
        cursor = page["next"]
        if not follow and not page["events"]:
            return


def _tail_kafka(follow: bool, show: Callable[[dict[str, Any]], None]) -> None:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from pipeline_service.events.relay import producer_config

    settings = _settings()
    if not settings.kafka_bootstrap_servers:
        raise _fail("--kafka needs LAMINAR_KAFKA_BOOTSTRAP_SERVERS")
    base = {
        key: value
        for key, value in producer_config(settings).items()
        if key.startswith(("bootstrap.", "security.", "sasl.", "ssl.", "client."))
    }
    # assign() rather than a consumer group: no group join to wait for, nothing committed.
    consumer = Consumer({**base, "group.id": "laminar-events-tail", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(settings.events_topic, timeout=10)
        partitions = metadata.topics[settings.events_topic].partitions
        consumer.assign([TopicPartition(settings.events_topic, p, 0) for p in partitions])
        quiet = 0.0
        while follow or quiet < 3:
            message = consumer.poll(0.5)
            if message is None or message.error():
                quiet += 0.5
                continue
            quiet = 0.0
            show(json.loads(message.value() or b"{}"))
    except KafkaException as exc:
        raise _fail(f"cannot read {settings.events_topic}: {exc}") from None
    finally:
        consumer.close()


def _print_json(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _print_line(event: dict[str, Any]) -> None:
    data = event.get("data", {})
    step = f" step {data['step_id']}#{data.get('attempt')}" if data.get("step_id") else ""
    error = f" error: {data['error']}" if data.get("error") else ""
    console.print(
        f"{event.get('time')} {event.get('type')} {data.get('pipeline')} {event.get('subject')}"
        f"{step} {data.get('status') or ''} by {data.get('actor')}{error}",
        highlight=False,
        markup=False,
    )


def _serve_metrics(settings: ServiceSettings, port: int | None) -> RelayMetrics | None:
    if port is None:
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    start_http_server(port, addr=settings.http_host, registry=registry)
    return RelayMetrics(registry)


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
