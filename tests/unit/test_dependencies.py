"""Which upstream runs a downstream run waits for (mixed cadence, DST), which downstream
interval an upstream run belongs to, cycles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline_service.scheduling.dependencies import (
    dependency_cycle,
    downstream_interval,
    upstream_dates,
)

HOURLY = {"schedule": {"cron": "@hourly", "timezone": "Europe/Berlin"}}
DAILY = {"schedule": {"cron": "@daily", "timezone": "Europe/Berlin"}}
NY_DAILY = {"schedule": {"cron": "@daily", "timezone": "America/New_York"}}


def test_a_daily_downstream_waits_for_the_hourly_runs_of_its_day() -> None:
    for start, hours in (
        (datetime(2027, 3, 27, 23, tzinfo=UTC), 23),  # Berlin spring forward
        (datetime(2027, 10, 30, 22, tzinfo=UTC), 25),  # Berlin fall back
        (datetime(2027, 6, 1, 22, tzinfo=UTC), 24),
    ):
        interval = downstream_interval(DAILY, start + timedelta(hours=5))
        assert interval.start == start
        dates = upstream_dates(HOURLY, interval.start, interval.end)
        assert len(dates) == hours and dates[0] == start
        assert dates[-1] == interval.end - timedelta(hours=1)
    # Same cadence: the same logical date; without a schedule: the date itself.
    day = datetime(2027, 11, 7, 4, tzinfo=UTC)  # midnight in New York (EDT)
    interval = downstream_interval(NY_DAILY, day)
    assert interval.end - interval.start == timedelta(hours=25)
    assert upstream_dates(NY_DAILY, interval.start, interval.end) == [day]
    assert upstream_dates({}, interval.start, interval.end) == [day]
    assert downstream_interval({}, day).start == downstream_interval({}, day).end == day


def test_cycles() -> None:
    assert dependency_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert dependency_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [
        "a",
        "b",
        "c",
        "a",
    ]
