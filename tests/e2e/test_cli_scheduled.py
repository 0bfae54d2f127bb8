"""What external schedulers and seed users call: dated runs (`--logical-date`,
`--latest-interval`) that never run twice, `--sql-env`, `run --validate`, `-n`/`-s`, and a
multi-statement SQL text as one step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_cli_run import HELLO, assert_clean, lines, query, tables

DATED = """\
name: dated
schedule: {{cron: "0 6 * * *", timezone: Europe/Berlin}}
steps:
  - id: record
    type: python
    script: record.py
  - id: interval
    type: sql
    depends_on: [record]
    sql: >
      CREATE OR REPLACE TABLE interval_seen AS SELECT
      '{{{{ data_interval_start }}}}' AS start_at, '{{{{ data_interval_end }}}}' AS end_at,
      '{{{{ ds }}}}' AS ds
"""


def dated_pipeline(tmp_path: Path) -> tuple[Path, Path]:
    pipeline_dir = tmp_path / "pipeline"
    pipeline_dir.mkdir()
    counter = tmp_path / "runs"
    (pipeline_dir / "record.py").write_text(
        f"with open({str(counter)!r}, 'a') as f:\n    f.write('ran\\n')\n"
    )
    (pipeline_dir / "pipeline.yaml").write_text(DATED.format())
    return pipeline_dir / "pipeline.yaml", counter


def test_a_second_start_for_the_same_logical_date_reports_the_run(cli: Cli, tmp_path: Path) -> None:
    pipeline, counter = dated_pipeline(tmp_path)
    args = ("run", "--once", "--no-ui", pipeline, "-s", tmp_path / "state")
    first = cli.run(*args, "--logical-date", "2026-11-23")
    assert first.code == 0, first.details
    # Midnight in the schedule's zone; the interval runs to the next 06:00 there.
    assert "default/dated/2026-11-22T23:00:00+00:00" in first.stdout, first.details
    assert query(tmp_path / "state", "SELECT * FROM interval_seen") == [
        ("2026-11-22T23:00:00+00:00", "2026-11-23T05:00:00+00:00", "2026-11-22")
    ]
    second = cli.run(*args, "--logical-date", "2026-11-23")
    assert second.code == 0, second.details
    assert_clean(second)
    assert "already ended (COMPLETED); reporting it, not running it again" in second.stdout
    assert lines(counter) == ["ran"]  # not run twice
    other_day = cli.run(*args, "--logical-date", "2026-11-24T06:00:00+01:00")
    assert other_day.code == 0, other_day.details
    assert lines(counter) == ["ran", "ran"]


def test_latest_interval_of_the_pipelines_cron(cli: Cli, tmp_path: Path) -> None:
    pipeline, _ = dated_pipeline(tmp_path)
    result = cli.run(
        "run", "--once", "--no-ui", pipeline, "-s", tmp_path / "state", "--latest-interval"
    )
    assert result.code == 0, result.details
    [(start, end, _)] = query(tmp_path / "state", "SELECT * FROM interval_seen")
    start_at, end_at = datetime.fromisoformat(start), datetime.fromisoformat(end)
    now = datetime.now(UTC)
    # Daily at 06:00 Berlin (05:00 or 04:00 UTC): a whole day, ending at the last fire.
    assert end_at - start_at == timedelta(days=1)
    assert timedelta(0) <= now - end_at < timedelta(days=1)
    assert end_at.hour in (4, 5) and end_at.minute == 0
    no_cron = cli.run("run", "--once", "--no-ui", HELLO, "-s", tmp_path / "h", "--latest-interval")
    assert no_cron.code == 2 and "needs the pipeline's cron" in no_cron.stderr, no_cron.details
    bad = cli.run("run", "--once", "--no-ui", HELLO, "-s", tmp_path / "h", "--logical-date", "x")
    assert bad.code == 2 and "--logical-date 'x'" in bad.stderr, bad.details


def test_sql_env_short_options_and_several_statements_in_one_step(cli: Cli, tmp_path: Path) -> None:
    sql = "CREATE TABLE a AS SELECT 1 AS x;\nCREATE TABLE b AS SELECT x + 1 AS y FROM a;"
    state = tmp_path / "state"
    result = cli.run(
        "run", "--once", "--no-ui", "--sql-env", "MY_SQL", "-n", "two", "-s", state,
        env={"MY_SQL": sql},
    )  # fmt: skip
    assert result.code == 0, result.details
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ ")]
    assert len(rows) == 1 and rows[0].startswith("│ sql ")  # one step, both statements
    assert {"a", "b"} <= tables(state)
    assert query(state, "SELECT y FROM b") == [(2,)]
    missing = cli.run("run", "--once", "--sql-env", "NOT_SET_ANYWHERE")
    assert missing.code == 2 and "--sql-env NOT_SET_ANYWHERE" in missing.stderr


def test_run_validate_says_what_validate_says(cli: Cli, tmp_path: Path) -> None:
    validated = cli.run("validate", HELLO)
    checked = cli.run("run", "--validate", HELLO)
    assert (
        (checked.code, checked.stdout)
        == (validated.code, validated.stdout)
        == (
            0,
            validated.stdout,
        )
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nsteps:\n  - id: a\n    type: sql\n    sql: SELEC 1\n")
    assert cli.run("run", "--validate", broken).stderr == cli.run("validate", broken).stderr
    assert cli.run("run", "--validate", broken).code == 2
    assert not list(tmp_path.glob("home/.local/share/laminar/pipelines/*"))  # nothing ran
