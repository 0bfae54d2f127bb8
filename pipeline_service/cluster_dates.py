"""Logical dates for runs started by an external scheduler (a Kubernetes CronJob, a Fargate
schedule): `laminar run --once --logical-date D` or `--latest-interval`.

A dated run's id is `{tenant}/{pipeline}/{logical_date}` (no `manual__` prefix), the same for
every start with that date, so a second start resumes or reports the run instead of running it
again. As in the scheduler, the logical date is the start of the run's data interval, and with
a cron the interval runs to the next fire time: the run for 2026-11-23 (daily) covers that
day and starts once the day is over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

from pipeline_service.scheduling.fire_times import Cron
from schemas.pipeline import Schedule


class LogicalDateError(ValueError):
    """Reported as a CLI problem (exit 2)."""


@dataclass(frozen=True)
class DataInterval:
    logical_date: datetime
    start: datetime
    end: datetime


def pipeline_cron(schedule: Schedule | None) -> tuple[str | None, tzinfo]:
    """The pipeline's `schedule: {cron, timezone}` (timezone defaults to UTC); validated with
    the definition, so nothing is left to check here."""
    if schedule is None:
        return None, UTC
    return schedule.expression, schedule.zone


def parse_logical_date(text: str, zone: tzinfo = UTC) -> datetime:
    """`2026-11-23` (midnight in the schedule's time zone) or an ISO 8601 date-time (without
    an offset: in the schedule's time zone)."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise LogicalDateError(
            f"--logical-date {text!r}: expected a date (2026-11-23) or an ISO 8601 date-time "
            "(2026-11-23T06:00:00+00:00)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def interval_for(logical_date: datetime, cron: str | None, zone: tzinfo) -> DataInterval:
    """The data interval of the run for `logical_date`: up to the next fire with a cron, else
    the instant itself."""
    if cron is None:
        return DataInterval(logical_date, logical_date, logical_date)
    interval = Cron(cron, zone).interval_starting(logical_date)
    return DataInterval(logical_date, logical_date, interval.end)


def latest_interval(cron: str | None, zone: tzinfo, now: datetime | None = None) -> DataInterval:
    """The latest complete interval of the cron at `now`: [the fire before last, the last]."""
    if cron is None:
        raise LogicalDateError(
            "--latest-interval needs the pipeline's cron (schedule: {cron: '0 6 * * *'}); "
            "give --logical-date instead"
        )
    # A fire exactly at `now` has happened: search just after it.
    fires = Cron(cron, zone).fires_before((now or datetime.now(UTC)) + timedelta(microseconds=1))
    end = next(fires)
    start = next(fires)
    return DataInterval(start, start, end)
