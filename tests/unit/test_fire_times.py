"""Fire times across DST in Europe/Berlin and America/New_York, data intervals, and the
`schedule` block's validation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pipeline_service.scheduling.fire_times import Cron, Interval, jitter_for, schedule_intervals
from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import PipelineDefinition, Schedule
from schemas.schedule import Overlap

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
# (zone, spring-forward day, fall-back day, the hour that is skipped / repeated)
ZONES = [(BERLIN, (2027, 3, 28), (2027, 10, 31)), (NEW_YORK, (2027, 3, 14), (2027, 11, 7))]


def local_day(zone: ZoneInfo, day: tuple[int, int, int]) -> tuple[datetime, datetime]:
    start = datetime(*day, tzinfo=zone)
    following = start.date() + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def fires_on(cron: str, zone: ZoneInfo, day: tuple[int, int, int]) -> list[datetime]:
    start, end = local_day(zone, day)
    fires = []
    for fire in Cron(cron, zone).fires_after(start - timedelta(microseconds=1)):
        if fire >= end:
            break
        fires.append(fire)
    backwards = []
    for fire in Cron(cron, zone).fires_before(end):
        if fire < start:
            break
        backwards.append(fire)
    assert backwards[::-1] == fires, "walking back must give the same fires"
    assert fires == sorted(set(fires)), "ascending, no fire twice"
    return fires


def wall(fires: list[datetime], zone: ZoneInfo) -> list[str]:
    return [f.astimezone(zone).strftime("%H:%M%z") for f in fires]


@pytest.mark.parametrize(("zone", "spring", "fall"), ZONES)
def test_daily_fires_exactly_once_on_both_transition_days(
    zone: ZoneInfo, spring: tuple[int, int, int], fall: tuple[int, int, int]
) -> None:
    # 02:30 does not exist on the spring day: shifted forward by the gap, to 03:30.
    assert wall(fires_on("30 2 * * *", zone, spring), zone) == [
        "03:30" + datetime(*spring, 12, tzinfo=zone).strftime("%z")
    ]
    # On the fall day the repeated wall time fires once, at its first occurrence.
    repeated = "30 2 * * *" if zone is BERLIN else "30 1 * * *"
    (fire,) = fires_on(repeated, zone, fall)
    summer = datetime(*fall, tzinfo=zone).strftime("%z")  # midnight: still summer time
    assert fire.astimezone(zone).strftime("%z") == summer
    assert fire.astimezone(zone).fold == 0
    # Every day around the transitions has exactly one run, one day apart in wall time.
    for day in (spring, fall):
        for offset in (-1, 1):
            other = (datetime(*day) + timedelta(days=offset)).timetuple()[:3]
            assert len(fires_on("30 2 * * *", zone, other)) == 1
    assert len(fires_on("@daily", zone, spring)) == len(fires_on("@daily", zone, fall)) == 1


@pytest.mark.parametrize(("zone", "spring", "fall"), ZONES)
def test_hourly_and_sub_hourly_fire_at_every_real_instant(
    zone: ZoneInfo, spring: tuple[int, int, int], fall: tuple[int, int, int]
) -> None:
    assert len(fires_on("0 * * * *", zone, spring)) == 23
    assert len(fires_on("@hourly", zone, spring)) == 23
    assert len(fires_on("*/15 * * * *", zone, spring)) == 92
    hourly = fires_on("0 * * * *", zone, fall)
    assert len(hourly) == 25
    # Every fire is a real hour apart from the next: none lost, none twice.
    assert {b - a for a, b in itertools.pairwise(hourly)} == {timedelta(hours=1)}
    quarter = fires_on("*/15 * * * *", zone, fall)
    assert len(quarter) == 100
    assert {b - a for a, b in itertools.pairwise(quarter)} == {timedelta(minutes=15)}


def test_fixed_hour_cron_with_minutes_fires_once_per_wall_time_on_fall_back() -> None:
    # The hour field is not every hour: the repeated 01:xx fire once each (first occurrence).
    fires = fires_on("*/30 1 * * *", NEW_YORK, (2027, 11, 7))
    assert wall(fires, NEW_YORK) == ["01:00-0400", "01:30-0400"]


@pytest.mark.parametrize(("zone", "spring", "fall"), ZONES)
def test_data_intervals_are_contiguous_across_dst(
    zone: ZoneInfo, spring: tuple[int, int, int], fall: tuple[int, int, int]
) -> None:
    cron = Cron("0 0 * * *", zone)
    for day in (spring, fall):
        start, end = local_day(zone, day)
        interval = cron.interval_starting(start)
        assert interval == Interval(start, end)
        assert interval.logical_date == start
        assert cron.interval_ending(end) == interval
        hours = (end - start) / timedelta(hours=1)
        assert hours == (23 if day == spring else 25)
        # The hourly intervals inside the daily one tile it exactly (23 or 25 of them).
        hourly = list(Cron("0 * * * *", zone).intervals(start, end))
        assert len(hourly) == hours
        assert hourly[0].start == start and hourly[-1].end == end
        assert all(a.end == b.start for a, b in itertools.pairwise(hourly))


def test_intervals_of_a_year_and_schedule_bounds() -> None:
    cron = Cron("@daily", BERLIN)
    start = datetime(2027, 1, 1, tzinfo=BERLIN).astimezone(UTC)
    end = datetime(2028, 1, 1, tzinfo=BERLIN).astimezone(UTC)
    year = list(cron.intervals(start, end))
    assert len(year) == 365
    assert len({i.logical_date for i in year}) == 365
    schedule = Schedule(
        cron="0 6 * * *", timezone="Europe/Berlin", start_date="2027-03-27", end_date="2027-03-30"
    )
    intervals = list(schedule_intervals(schedule, datetime(2020, 1, 1, tzinfo=UTC)))
    assert [wall([i.start], BERLIN)[0] for i in intervals] == [
        "06:00+0100",
        "06:00+0200",
        "06:00+0200",
    ]
    assert [i.start.astimezone(BERLIN).day for i in intervals] == [27, 28, 29]
    # Resuming after the first interval fired gives the rest, never the first again.
    later = list(schedule_intervals(schedule, intervals[0].end))
    assert later == intervals[1:]


def test_preview_and_jitter() -> None:
    cron = Cron("0 9 * * 1-5", NEW_YORK)
    fires = cron.next_fires(datetime(2027, 11, 5, 12, tzinfo=UTC), 3)  # a Friday
    assert [f.astimezone(NEW_YORK).strftime("%a %H:%M%z") for f in fires] == [
        "Fri 09:00-0400",
        "Mon 09:00-0500",
        "Tue 09:00-0500",
    ]
    schedule = Schedule(cron="@hourly", jitter="30s")
    delays = {jitter_for(schedule, "t/p", f) for f in fires}
    assert all(timedelta(0) <= d < timedelta(seconds=30) for d in delays)
    assert len(delays) == 3
    assert jitter_for(schedule, "t/p", fires[0]) == jitter_for(schedule, "t/p", fires[0])
    assert jitter_for(Schedule(cron="@hourly"), "t/p", fires[0]) == timedelta(0)


def schedule_problems(schedule: object) -> list[str]:
    doc = {"name": "p", "schedule": schedule, "steps": [{"id": "a", "type": "noop"}]}
    with pytest.raises(PipelineValidationError) as info:
        validate_pipeline(doc, source_dir=Path("."))
    return [str(p) for p in info.value.problems]


def test_schedule_block_validation_is_path_precise() -> None:
    full = {
        "cron": "@daily",
        "timezone": "America/New_York",
        "start_date": "2027-01-01",
        "end_date": "2027-12-31T00:00:00+00:00",
        "catchup": True,
        "overlap": "buffer_all",
        "jitter": "10s",
        "paused": True,
    }
    doc = {"name": "p", "schedule": full, "steps": [{"id": "a", "type": "noop"}]}
    schedule = validate_pipeline(doc, source_dir=Path(".")).schedule
    assert schedule is not None
    assert schedule.overlap is Overlap.BUFFER_ALL and schedule.paused and schedule.catchup
    assert schedule.start == datetime(2027, 1, 1, 5, tzinfo=UTC)
    assert schedule.jitter == timedelta(seconds=10)
    assert schedule_problems({"cron": "0 6 * *"}) == [
        "schedule.cron: cron '0 6 * *' has 4 fields; expected 5 (minute hour day-of-month "
        "month day-of-week, optionally a 6th: seconds) or an alias such as @daily"
    ]
    assert any(
        "schedule.cron" in p and "invalid cron" in p
        for p in schedule_problems({"cron": "61 * * * *"})
    )
    assert any(
        "schedule.cron" in p and "unknown cron alias" in p
        for p in schedule_problems({"cron": "@fortnightly"})
    )
    assert any(
        p.startswith("schedule.timezone:") and "Mars/Olympus" in p
        for p in schedule_problems({"cron": "@daily", "timezone": "Mars/Olympus"})
    )
    assert any(
        p.startswith("schedule.overlap:")
        for p in schedule_problems({"cron": "@daily", "overlap": "queue"})
    )
    assert any(
        p.startswith("schedule.jitter:")
        for p in schedule_problems({"cron": "@daily", "jitter": "2h"})
    )
    assert any(p.startswith("schedule.cronn:") for p in schedule_problems({"cronn": "@daily"}))
    assert any(
        p.startswith("schedule") and "end_date" in p
        for p in schedule_problems(
            {"cron": "@daily", "start_date": "2027-02-01", "end_date": "2027-01-01"}
        )
    )


def test_the_old_tz_key_is_an_alias_of_timezone() -> None:
    """Definitions stored before the schedule block had its model used `tz`: they still decode
    (as a run's input does inside the workflow) and fire in that zone."""
    stored = {
        "name": "p",
        "schedule": {"cron": "30 2 * * *", "tz": "Europe/Berlin"},
        "steps": [{"id": "a", "type": "noop"}],
    }
    decoded = PipelineDefinition.model_validate(stored)
    assert decoded.schedule is not None and decoded.schedule.timezone == "Europe/Berlin"
    validated = validate_pipeline(stored, source_dir=Path(".")).schedule
    assert validated == decoded.schedule
    # Spring-forward day in Berlin: 02:30 does not exist, the fire moves to 03:30 CEST.
    fires = Cron.of(validated).next_fires(datetime(2027, 3, 27, 12, tzinfo=UTC), 1)
    assert fires == [datetime(2027, 3, 28, 1, 30, tzinfo=UTC)]
    same = {"cron": "@daily", "tz": "Europe/Berlin", "timezone": "Europe/Berlin"}
    assert Schedule.model_validate(same).timezone == "Europe/Berlin"
    assert schedule_problems({"cron": "@daily", "tz": "UTC", "timezone": "Europe/Berlin"}) == [
        "schedule: give only one of timezone ('Europe/Berlin') and its old name tz ('UTC')"
    ]
    assert any(
        p.startswith("schedule.timezone:") and "Mars/Olympus" in p
        for p in schedule_problems({"cron": "@daily", "tz": "Mars/Olympus"})
    )
