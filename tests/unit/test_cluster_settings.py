"""Settings of the pipeline cluster: the seed's variable names and config block, warnings for
unknown LAMINAR_ variables, and logical dates for external schedulers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pipeline_service.cluster_dates import (
    LogicalDateError,
    interval_for,
    latest_interval,
    parse_logical_date,
    pipeline_cron,
)
from pipeline_service.settings import ConfigFileError, load_run_settings, unknown_env_warnings
from schemas.pipeline import Schedule


def test_seed_names_and_units() -> None:
    env = {
        "LAMINAR_CHECKPOINT_URL": "s3://bucket/state",
        "LAMINAR_PIPELINE_NAME": "nightly",
        "LAMINAR_CHECKPOINT_INTERVAL": "2500",  # milliseconds, as the seed has it
    }
    settings = load_run_settings(None, environ=env)
    assert settings.state_dir == "s3://bucket/state"  # the `//` survives
    assert settings.name == "nightly"
    assert settings.checkpoint_interval == timedelta(milliseconds=2500)
    # The command line wins, in seconds; LAMINAR_STATE_DIR wins over the seed's name.
    override = load_run_settings(
        None, environ={**env, "LAMINAR_STATE_DIR": "/x"}, checkpoint_interval="0"
    )
    assert override.checkpoint_interval == timedelta(0)


def test_seed_checkpoint_block(tmp_path: Path) -> None:
    config = tmp_path / "laminar.yaml"
    config.write_text(
        "checkpoint:\n  interval: 500\n  path: gs://bucket/p\n"
        "  retention: {max_checkpoints: 3, max_age: 7d}\n"
    )
    settings = load_run_settings(config, environ={})
    assert settings.state_dir == "gs://bucket/p"
    assert settings.checkpoint_interval == timedelta(milliseconds=500)
    assert settings.retention.max_checkpoints == 3
    assert settings.retention.max_age == timedelta(days=7)
    config.write_text("checkpoint:\n  intervall: 5\n")
    with pytest.raises(ConfigFileError, match=r"checkpoint.intervall: unknown key"):
        load_run_settings(config, environ={})


def test_unknown_laminar_variables_name_the_closest_known_one() -> None:
    warnings = unknown_env_warnings(
        {
            "LAMINAR_CHEKPOINT_URL": "s3://x",
            "LAMINAR_STATE_DIR": "/ok",
            "LAMINAR_PARAMS__REGION": "EU",
            "LAMINAR_CONNECTIONS__WH__HOST": "db",
            "LAMINAR_RESOURCES_FILE": "/etc/laminar.yaml",
            "LAMINAR_SPARK__KUBERNETES__IMAGE": "spark:4",
            "LAMINAR_DATABASE_URL": "sqlite://",
            "LAMINAR_SPARK_MASTER": "local[2]",
            "LAMINAR_ZZZ": "1",
            "PATH": "/bin",
        }
    )
    assert warnings == [
        "unknown environment variable LAMINAR_CHEKPOINT_URL is ignored; did you mean "
        "LAMINAR_CHECKPOINT_URL?",
        "unknown environment variable LAMINAR_SPARK_MASTER is ignored; did you mean "
        "LAMINAR_SPARK__MASTER?",
        "unknown environment variable LAMINAR_ZZZ is ignored",
    ]


def test_logical_dates_and_intervals() -> None:
    cron, zone = pipeline_cron(Schedule(cron="0 6 * * *", timezone="Europe/Berlin"))
    assert cron == "0 6 * * *" and zone == ZoneInfo("Europe/Berlin")
    day = parse_logical_date("2026-11-23", zone)
    assert day == datetime(2026, 11, 22, 23, tzinfo=UTC)
    assert parse_logical_date("2026-11-23T06:00:00Z") == datetime(2026, 11, 23, 6, tzinfo=UTC)
    interval = interval_for(day, cron, zone)
    assert (interval.start, interval.end) == (day, datetime(2026, 11, 23, 5, tzinfo=UTC))
    assert interval_for(day, None, UTC).end == day
    at_fire = datetime(2026, 11, 24, 5, tzinfo=UTC)  # 06:00 in Berlin: that fire has happened
    latest = latest_interval(cron, zone, at_fire)
    assert (latest.start, latest.end) == (datetime(2026, 11, 23, 5, tzinfo=UTC), at_fire)
    just_before = latest_interval(cron, zone, at_fire - timedelta(seconds=2))
    assert just_before.end == datetime(2026, 11, 23, 5, tzinfo=UTC)
    with pytest.raises(LogicalDateError, match="needs the pipeline's cron"):
        latest_interval(None, UTC)
    assert pipeline_cron(None) == (None, UTC)
    assert pipeline_cron(Schedule(cron="@daily")) == ("0 0 * * *", ZoneInfo("UTC"))


def test_workflow_sandbox_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """LAMINAR_WORKFLOW_SANDBOX: known, off by default, selects the SDK's sandboxed runner."""
    from temporalio.worker import UnsandboxedWorkflowRunner
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    from pipeline_service.settings import WorkflowSettings
    from pipeline_service.temporal.worker import workflow_runner

    env = {"LAMINAR_WORKFLOW_SANDBOX": "true"}
    assert unknown_env_warnings(env) == []
    load_run_settings(None, environ=env)  # `laminar run` reads the environment too: not refused
    monkeypatch.delenv("LAMINAR_WORKFLOW_SANDBOX", raising=False)
    assert WorkflowSettings().workflow_sandbox is False
    monkeypatch.setenv("LAMINAR_WORKFLOW_SANDBOX", "true")
    assert WorkflowSettings().workflow_sandbox is True
    assert isinstance(workflow_runner(True), SandboxedWorkflowRunner)
    assert isinstance(workflow_runner(False), UnsandboxedWorkflowRunner)
