"""The parts of a pipeline's `schedule` (the model is `schemas.pipeline.Schedule`): cron
aliases and checks, time zones, overlap policies. Fire times are computed by
`pipeline_service.scheduling.fire_times`."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class Overlap(StrEnum):
    """What a fire does while the schedule's previous run is still going."""

    SKIP = "skip"
    """Drop this fire's run (its interval is not run by the schedule; a backfill can)."""
    BUFFER_ONE = "buffer_one"
    """Start it when the running one ends; at most one waits (a newer fire replaces it)."""
    BUFFER_ALL = "buffer_all"
    """Start every waiting fire in order, one at a time."""
    CANCEL_OTHER = "cancel_other"
    """Cancel the running one and start this one."""
    ALLOW_ALL = "allow_all"
    """Start it at once, whatever is running."""


def expand_cron(expression: str) -> str:
    """`@daily` etc. as their five fields; anything else as given (stripped)."""
    text = expression.strip()
    return CRON_ALIASES.get(text.lower(), text)


def check_cron(expression: str) -> str:
    expanded = expand_cron(expression)
    if expanded.startswith("@"):
        raise ValueError(
            f"unknown cron alias {expression!r} (expected one of: {', '.join(CRON_ALIASES)})"
        )
    fields = expanded.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"cron {expression!r} has {len(fields)} fields; expected 5 "
            "(minute hour day-of-month month day-of-week, optionally a 6th: seconds) "
            "or an alias such as @daily"
        )
    if not croniter.is_valid(expanded):
        raise ValueError(f"invalid cron expression {expression!r}")
    return expression.strip()


def check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None
    return name


def zone_instant(value: datetime | date | None, zone: ZoneInfo) -> datetime | None:
    """A date is midnight in the zone; a naive date-time is in the zone; both as UTC."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=zone).astimezone(UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)
