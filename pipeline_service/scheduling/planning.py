"""What a schedule has due at a moment: the pure part of the scheduler's `plan_schedule`."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import islice

from pipeline_service.scheduling.fire_times import Cron, Interval, jitter_for, schedule_intervals
from schemas.pipeline import Schedule
from schemas.scheduling import ScheduledFire, SchedulePlan

MAX_DUE = 200
"""Intervals handed to the scheduler at once; a long catch-up takes several plans."""


def scheduled_fire(schedule: Schedule, key: str, interval: Interval) -> ScheduledFire:
    return ScheduledFire(
        logical_date=interval.start,
        interval_end=interval.end,
        wake_at=interval.end + jitter_for(schedule, key, interval.end),
    )


def plan(schedule: Schedule, key: str, cursor: datetime | None, now: datetime) -> SchedulePlan:
    """Intervals due at `now` after `cursor` (the end of the last handled one) and the next.

    A new scheduler (no cursor) starts at `now`, or before start_date with catchup (it then
    runs every interval since start_date). Without catchup only the latest due interval runs.
    """
    start_cursor = cursor
    if start_cursor is None:
        first = schedule.start
        start_cursor = first - timedelta(microseconds=1) if schedule.catchup and first else now
    if not schedule.catchup:
        # Only the latest due interval: move the cursor to just before its end.
        latest = next(Cron.of(schedule).fires_before(now + timedelta(microseconds=1)))
        start_cursor = max(start_cursor, latest - timedelta(microseconds=1))
    due: list[ScheduledFire] = []
    upcoming: ScheduledFire | None = None
    for interval in islice(schedule_intervals(schedule, start_cursor), MAX_DUE + 1):
        fire = scheduled_fire(schedule, key, interval)
        if fire.wake_at > now or len(due) == MAX_DUE:
            upcoming = fire
            break
        due.append(fire)
    return SchedulePlan(
        active=True,
        paused=schedule.paused,
        overlap=schedule.overlap.value,
        cursor=start_cursor if cursor is None else cursor,
        due=due,
        next=upcoming,
    )
