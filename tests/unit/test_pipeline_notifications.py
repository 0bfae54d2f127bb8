"""Pipeline-level `notifications` and `sla`: validation with paths, the deadline of a logical
date (time zones, DST), which deadlines a check covers, and the fixed message wording."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pipeline_service.events.notifier import describe, sla_deadlines
from schemas.documents import PipelineValidationError
from schemas.events import EventData, EventType, LifecycleEvent, data_schema_uri
from schemas.loading import load_pipeline_text, validate_pipeline
from schemas.pipeline import NotifyOn, Schedule, Sla

BERLIN = ZoneInfo("Europe/Berlin")


def definition(**fields: Any) -> dict[str, Any]:
    return {"name": "orders", "steps": [{"id": "a", "type": "noop"}], **fields}


def problems(data: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(PipelineValidationError) as caught:
        validate_pipeline(data, source_dir=tmp_path)
    return [str(problem) for problem in caught.value.problems]


def test_rules_and_sla_load(tmp_path: Path) -> None:
    loaded = validate_pipeline(
        definition(
            schedule={"cron": "0 2 * * *", "timezone": "Europe/Berlin"},
            sla={"deadline": "08:00", "timezone": "Europe/Berlin"},
            notifications=[
                {"on": ["failure", "sla_missed"], "channel": "oncall"},
                {"on": ["success"], "channel": "mail"},
            ],
        ),
        source_dir=tmp_path,
    )
    assert [rule.on for rule in loaded.notifications] == [
        [NotifyOn.FAILURE, NotifyOn.SLA_MISSED],
        [NotifyOn.SUCCESS],
    ]
    assert loaded.sla is not None and loaded.sla.deadline == "08:00"
    # Definitions stored before notifications existed carry `notifications: null`.
    assert (
        validate_pipeline(definition(notifications=None), source_dir=tmp_path).notifications == []
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"notifications": [{"on": ["failed"], "channel": "x"}]},
            "notifications[0].on[0]",
        ),
        ({"notifications": [{"on": [], "channel": "x"}]}, "notifications[0].on"),
        (
            {"notifications": [{"on": ["success", "success"], "channel": "x"}]},
            "listed twice",
        ),
        ({"notifications": [{"on": ["success"]}]}, "notifications[0].channel"),
        ({"sla": {"after": "2h"}}, "sla: an sla needs a schedule"),
        (
            {
                "schedule": {"cron": "@daily"},
                "sla": {"deadline": "8:00"},
            },
            "is not a time of day as HH:MM",
        ),
        (
            {"schedule": {"cron": "@daily"}, "sla": {"deadline": "08:00", "after": "1h"}},
            "either deadline",
        ),
        ({"schedule": {"cron": "@daily"}, "sla": {}}, "either deadline"),
        (
            {"schedule": {"cron": "@daily"}, "sla": {"after": "1h", "timezone": "Europe/Berlin"}},
            "timezone applies to deadline only",
        ),
        (
            {"schedule": {"cron": "@daily"}, "sla": {"deadline": "08:00", "timezone": "Mars/X"}},
            "sla.timezone",
        ),
        (
            {"notifications": [{"on": ["sla_missed"], "channel": "x"}]},
            "sla_missed needs an `sla`",
        ),
    ],
)
def test_bad_rules_and_slas_are_refused_with_their_path(
    fields: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    found = problems(definition(**fields), tmp_path)
    assert any(expected in problem for problem in found), found


def test_after_is_a_duration_after_the_end_of_the_data_interval() -> None:
    sla = Sla(after=timedelta(hours=2))
    end = datetime(2026, 11, 25, tzinfo=UTC)
    assert sla.due(end) == datetime(2026, 11, 25, 2, tzinfo=UTC)


def test_deadline_is_the_first_wall_time_at_or_after_the_interval_end() -> None:
    sla = Sla(deadline="08:00", timezone="Europe/Berlin")
    # Daily at 02:00 Berlin: the interval ends at 02:00; 08:00 the same day (CET, UTC+1).
    end = datetime(2026, 11, 25, 2, tzinfo=BERLIN)
    assert sla.due(end) == datetime(2026, 11, 25, 7, tzinfo=UTC)
    # An interval ending after 08:00 has its deadline the next morning.
    assert sla.due(datetime(2026, 11, 25, 9, tzinfo=BERLIN)) == datetime(
        2026, 11, 26, 7, tzinfo=UTC
    )
    # At exactly 08:00: that instant.
    assert sla.due(datetime(2026, 11, 25, 8, tzinfo=BERLIN)) == datetime(
        2026, 11, 25, 7, tzinfo=UTC
    )
    # Summer time (CEST, UTC+2).
    assert sla.due(datetime(2027, 7, 1, 2, tzinfo=BERLIN)) == datetime(2027, 7, 1, 6, tzinfo=UTC)


def test_a_deadline_in_the_dst_gap_is_shifted_forward() -> None:
    # 2027-03-28: Berlin clocks jump from 02:00 to 03:00; 02:30 does not exist.
    sla = Sla(deadline="02:30", timezone="Europe/Berlin")
    due = sla.due(datetime(2027, 3, 28, 0, 0, tzinfo=UTC))  # 01:00 CET
    assert due == datetime(2027, 3, 28, 1, 30, tzinfo=UTC)  # 03:30 CEST
    assert due.astimezone(BERLIN).hour == 3


def test_sla_deadlines_cover_the_window_and_the_schedule_bounds() -> None:
    schedule = Schedule(cron="0 * * * *", start_date=datetime(2026, 11, 24, 3, tzinfo=UTC))
    sla = Sla(after=timedelta(minutes=30))
    found = sla_deadlines(
        sla,
        schedule,
        datetime(2026, 11, 24, 4, 30, tzinfo=UTC),  # exclusive
        datetime(2026, 11, 24, 7, 30, tzinfo=UTC),  # inclusive
    )
    assert [(i.logical_date.hour, d.strftime("%H:%M")) for i, d in found] == [
        (4, "05:30"),
        (5, "06:30"),
        (6, "07:30"),
    ]
    # Nothing before start_date (the 02:00 interval's deadline, 03:30, is in the window).
    early = sla_deadlines(
        sla, schedule, datetime(2026, 11, 24, 0, tzinfo=UTC), datetime(2026, 11, 24, 4, tzinfo=UTC)
    )
    assert early == []
    bounded = Schedule(
        cron="0 * * * *",
        start_date=datetime(2026, 11, 24, 3, tzinfo=UTC),
        end_date=datetime(2026, 11, 24, 5, tzinfo=UTC),
    )
    found = sla_deadlines(
        sla, bounded, datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC)
    )
    assert [i.logical_date.hour for i, _ in found] == [3, 4]


def test_a_deadline_sla_covers_daily_intervals_once_each() -> None:
    schedule = Schedule(cron="0 2 * * *", timezone="Europe/Berlin")
    sla = Sla(deadline="08:00", timezone="Europe/Berlin")
    found = sla_deadlines(
        sla,
        schedule,
        datetime(2026, 11, 24, 7, tzinfo=UTC),
        datetime(2026, 11, 27, 7, tzinfo=UTC),
    )
    assert [d.astimezone(BERLIN).strftime("%m-%d %H:%M") for _, d in found] == [
        "11-25 08:00",
        "11-26 08:00",
        "11-27 08:00",
    ]
    assert [i.logical_date.astimezone(BERLIN).day for i, _ in found] == [24, 25, 26]


def event(type: EventType, **data: Any) -> LifecycleEvent:
    return LifecycleEvent(
        id="e",
        source="/laminar/acme/pipelines/orders",
        type=type,
        subject="run",
        time=datetime(2026, 11, 24, tzinfo=UTC),
        dataschema=data_schema_uri(type),
        data=EventData(tenant="acme", pipeline="orders", actor="schedule", **data),
    )


def test_messages_are_fixed_wording_and_nothing_in_them_is_evaluated() -> None:
    title, text = describe(
        event(
            EventType.PIPELINE_FAILED,
            version=3,
            run_id="r1",
            status="FAILED",
            error="{{ secrets.token }} {% for x in y %}",
        ),
        NotifyOn.FAILURE,
    )
    assert title == "[acme] orders: run failed"
    assert "run: r1" in text and "status: FAILED" in text
    assert "error: {{ secrets.token }} {% for x in y %}" in text
    title, text = describe(
        event(
            EventType.PIPELINE_SLA_MISSED,
            version=1,
            logical_date=datetime(2026, 11, 24, tzinfo=UTC),
            deadline=datetime(2026, 11, 25, 7, tzinfo=UTC),
            reason="no run for this logical date",
        ),
        NotifyOn.SLA_MISSED,
    )
    assert title == "[acme] orders: SLA missed"
    assert "deadline: 2026-11-25T07:00:00+00:00" in text
    assert "reason: no run for this logical date" in text


def test_an_unquoted_yaml_on_key_is_read_as_on(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads `on:` as the boolean true.
    text = (
        "name: x\nsteps: [{id: a, type: noop}]\nnotifications:\n  - {on: [failure], channel: c}\n"
    )
    loaded = load_pipeline_text(text, source_dir=tmp_path)
    assert loaded.notifications[0].on == [NotifyOn.FAILURE]
