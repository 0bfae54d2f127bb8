"""Prometheus metrics. The API's registry counts requests and runs started, and reads run
counts (by tenant and status, QUEUED = queue depth) from the database at scrape time, so every
API replica reports the same truth; step durations are observed where steps are recorded (the
worker), on the worker's registry."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline_service.db.models import Run, Tenant

# Finer around the API's latency objectives (50 ms for a read, 150 ms for a trigger).
LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (by `laminar server --workers N`, N > 1): counts live in files there, one per process."""


class RunCounts(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily(
            "laminar_runs", "Runs recorded, by tenant and status", labels=["tenant", "status"]
        )
        queued = GaugeMetricFamily(
            "laminar_queue_depth", "Runs waiting to start (QUEUED), by tenant", labels=["tenant"]
        )
        with self._sessions() as session:
            rows = session.execute(
                select(Tenant.name, Run.status, func.count())
                .join(Run, Run.tenant_id == Tenant.id)
                .group_by(Tenant.name, Run.status)
            ).all()
        for tenant, status, count in rows:
            runs.add_metric([tenant, status], count)
            if status == "QUEUED":
                queued.add_metric([tenant], count)
        yield runs
        yield queued


class ApiMetrics:
    def __init__(self, sessions: sessionmaker[Session] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "laminar_api_request_seconds",
            "API request latency, by method, route and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.runs_started = Counter(
            "laminar_runs_started",
            "Runs started through the launcher, by tenant and trigger",
            ["tenant", "trigger"],
            registry=self.registry,
        )
        self.run_counts = RunCounts(sessions) if sessions is not None else None
        if self.run_counts is not None:
            self.registry.register(self.run_counts)

    def exposition(self) -> bytes:
        """The Prometheus text format: this process's counts, or with several server processes
        (MULTIPROC_ENV set) the sum of every process's, whichever process answers."""
        if not os.environ.get(MULTIPROC_ENV):
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if self.run_counts is not None:
            registry.register(self.run_counts)
        return generate_latest(registry)


class StepMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "laminar_step_duration_seconds",
            "Duration of finished step attempts, by step type and status",
            ["type", "status"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.finished_runs = Counter(
            "laminar_runs_finished",
            "Runs finished, by tenant and status (recorded by this worker)",
            ["tenant", "status"],
            registry=registry,
        )
