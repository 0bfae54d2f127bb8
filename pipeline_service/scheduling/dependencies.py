"""Dependencies between pipelines: which upstream runs a downstream run waits for, which
downstream runs an upstream run may release, and cycles among a tenant's pipelines."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pipeline_service.scheduling.fire_times import Cron, Interval
from schemas.pipeline import Schedule


def _schedule(definition: dict[str, Any]) -> Schedule | None:
    raw = definition.get("schedule")
    return Schedule.model_validate(raw) if raw else None


def upstream_dates(upstream: dict[str, Any], start: datetime, end: datetime) -> list[datetime]:
    """The logical dates of the upstream's runs inside [start, end): its schedule's intervals
    there (24 hourly ones in a day, 23 or 25 on DST days); without a schedule, or for an
    instant, the same logical date."""
    schedule = _schedule(upstream)
    if schedule is None or end <= start:
        return [start]
    return [i.start for i in Cron.of(schedule).intervals(start, end)] or [start]


def downstream_interval(downstream: dict[str, Any], upstream_date: datetime) -> Interval:
    """The downstream's interval that holds an upstream run's logical date."""
    schedule = _schedule(downstream)
    if schedule is None:
        return Interval(upstream_date, upstream_date)
    cron = Cron.of(schedule)
    start = next(cron.fires_before(upstream_date + timedelta(microseconds=1)))
    return cron.interval_starting(start)


def dependency_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle among pipelines (`name -> upstreams`), as `[a, b, a]`, or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle: list[str] = list(exc.args[1])
        return cycle[::-1]  # graphlib lists it against the arrows; read it as "depends on"
    return None
