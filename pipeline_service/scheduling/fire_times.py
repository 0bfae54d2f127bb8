"""Fire times of a cron in an IANA time zone, as UTC instants, correct across DST changes.

croniter walks the *wall clock* (naive local times); each match is then placed on the time
line here, by one rule (Laminar's, as Airflow's): no interval is lost or run twice.

- A local time that does not exist (spring forward: 02:30 in Berlin on 2027-03-28) fires
  shifted forward by the length of the gap (03:30 CEST). If that lands on another fire
  (`0 * * * *`: 02:00 -> 03:00), it is one fire.
- A local time that happens twice (fall back: 02:30 in Berlin on 2027-10-31) fires once, at
  its first occurrence, unless the cron matches every hour (`0 * * * *`, `*/15 * * * *`):
  then it fires at every real instant that matches (25 hourly fires that day).

The run that fires at F covers the data interval [previous fire, F) and its logical date is
the interval's start (as in Airflow).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import islice

from croniter import croniter

from schemas.pipeline import Schedule
from schemas.schedule import expand_cron

_NEAR = timedelta(days=2)


@dataclass(frozen=True)
class Interval:
    """One run's data interval [start, end); it fires at `end`."""

    start: datetime
    end: datetime

    @property
    def logical_date(self) -> datetime:
        return self.start


class Cron:
    """A cron expression read in a time zone."""

    def __init__(self, expression: str, zone: tzinfo) -> None:
        self.expression = expand_cron(expression)
        self.zone = zone
        hours = croniter(self.expression).expanded[1]
        self.every_hour = hours == ["*"] or len(hours) == 24

    @classmethod
    def of(cls, schedule: Schedule) -> Cron:
        return cls(schedule.expression, schedule.zone)

    def _instants(self, wall: datetime) -> list[datetime]:
        """The UTC instants of one wall-clock match (see the module's rule)."""
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        if first.astimezone(self.zone).replace(tzinfo=None) != wall:
            # In the gap: fold=0 reads it with the offset before the change, which is the
            # wall time shifted forward by the gap (02:30 -> 03:30).
            return [first]
        return [first, second] if self.every_hour else [first]

    def _jump(self, wall: datetime) -> timedelta:
        """How far the zone's clock jumps within two days of `wall` (0 away from DST changes):
        wall-clock order and time-line order of matches differ by at most this."""
        offsets = [
            (wall + delta).replace(tzinfo=self.zone).utcoffset() or timedelta(0)
            for delta in (-_NEAR, timedelta(0), _NEAR)
        ]
        return max(offsets) - min(offsets)

    def fires_after(self, after: datetime) -> Iterator[datetime]:
        """Fire times strictly after `after`, ascending, as UTC instants."""
        after = after.astimezone(UTC)
        local = after.astimezone(self.zone).replace(tzinfo=None)
        start = local - self._jump(local)
        walk = croniter(self.expression, start)
        pending: list[datetime] = []
        last: datetime | None = None
        while True:
            wall = walk.get_next(datetime)
            for instant in self._instants(wall):
                if instant > after:
                    heapq.heappush(pending, instant)
            horizon = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC) - self._jump(wall)
            while pending and pending[0] <= horizon:
                instant = heapq.heappop(pending)
                if instant != last:
                    last = instant
                    yield instant.replace(fold=0)

    def fires_before(self, before: datetime) -> Iterator[datetime]:
        """Fire times strictly before `before`, descending, as UTC instants."""
        before = before.astimezone(UTC)
        local = before.astimezone(self.zone).replace(tzinfo=None)
        start = local + self._jump(local)
        walk = croniter(self.expression, start)
        pending: list[tuple[float, datetime]] = []
        last: datetime | None = None
        while True:
            wall = walk.get_prev(datetime)
            for instant in self._instants(wall):
                if instant < before:
                    heapq.heappush(pending, (-instant.timestamp(), instant))
            horizon = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC) + self._jump(wall)
            while pending and pending[0][1] >= horizon:
                instant = heapq.heappop(pending)[1]
                if instant != last:
                    last = instant
                    yield instant.replace(fold=0)

    def next_fires(self, after: datetime, count: int) -> list[datetime]:
        return list(islice(self.fires_after(after), count))

    def previous_fire(self, before: datetime) -> datetime:
        return next(self.fires_before(before))

    def interval_ending(self, fire: datetime) -> Interval:
        """The data interval of the run that fires at `fire`."""
        return Interval(self.previous_fire(fire), fire)

    def interval_starting(self, logical_date: datetime) -> Interval:
        """The data interval whose logical date (start) is `logical_date`."""
        start = logical_date.astimezone(UTC)
        return Interval(start, next(self.fires_after(start)))

    def intervals(self, start: datetime, end: datetime) -> Iterator[Interval]:
        """Every interval with start >= `start` and end <= `end`, in order."""
        fires = self.fires_after(start - timedelta(microseconds=1))
        previous = next(fires)
        for fire in fires:
            if fire > end:
                return
            yield Interval(previous, fire)
            previous = fire


def intervals_reversed(cron: Cron, start: datetime, end: datetime) -> Iterator[Interval]:
    """`cron.intervals(start, end)` newest first."""
    fires = cron.fires_before(end + timedelta(microseconds=1))
    later = next(fires)
    for fire in fires:
        if fire < start:
            return
        yield Interval(fire, later)
        later = fire


def schedule_intervals(schedule: Schedule, after: datetime) -> Iterator[Interval]:
    """The schedule's intervals that end (fire) after `after`, in order: each starts at or
    after start_date and before end_date."""
    cron = Cron.of(schedule)
    start = cron.previous_fire(next(cron.fires_after(after)))
    first = schedule.start
    if first is not None and start < first:
        start = next(cron.fires_after(first - timedelta(microseconds=1)))
    end = schedule.end
    fires = cron.fires_after(start)
    while end is None or start < end:
        fire = next(fires)
        yield Interval(start, fire)
        start = fire


def jitter_for(schedule: Schedule, key: str, fire: datetime) -> timedelta:
    """A stable delay in [0, jitter) for this pipeline and fire (the same on every worker)."""
    if not schedule.jitter:
        return timedelta(0)
    digest = hashlib.sha256(f"{key}@{fire.isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(seconds=schedule.jitter.total_seconds() * fraction)
