"""Prometheus metrics of the events relay."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge(
            "laminar_events_pending", "Outbox rows not yet published to Kafka.", registry=registry
        )
        self.lag = Gauge(
            "laminar_events_relay_lag_seconds",
            "Age of the oldest outbox row not yet published (0 when none is pending).",
            registry=registry,
        )
        self.published = Counter(
            "laminar_events_published", "Events acknowledged by Kafka.", registry=registry
        )
        self.failed = Counter(
            "laminar_events_publish_failures",
            "Events not acknowledged in a round (retried).",
            registry=registry,
        )
