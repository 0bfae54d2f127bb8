"""`laminar run` without `--once` keeps firing the pipeline's schedule until Ctrl-C, and a
restarted `laminar run` catches up per `catchup` (the scheduler's cursor lives in the state
dir's Temporal database). A seconds cron (every 2 or 4 s) keeps the tests short.

A catch-up runs the missed intervals one after another, and while the previous run still
runs the scheduler looks again every 2 s (workflows/schedule.py BUFFER_POLL): on a loaded
machine, where a run outlasts the launch of the next, that is about one run per 2 s. So the
catch-up test fires every 4 s: catching up takes about half the downtime (which includes the
restart of `laminar run`, tens of seconds under load). Every 2 s it took as long as the
downtime, past its 90 s wait at load ~12."""

from __future__ import annotations

import itertools
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path

from tests.e2e.conftest import Background, Cli, wait_for

PIPELINE = """\
name: ticking
schedule: {{cron: "* * * * * */{every}", catchup: {catchup}}}  # overlap: skip (the default)
steps:
  - id: record
    type: python
    script: record.py
    args: ["{{{{ logical_date }}}}", "{{{{ data_interval_start }}}}", "{{{{ data_interval_end }}}}"]
"""
RECORD = """\
import sys
with open({path!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
"""


def ticking(tmp_path: Path, catchup: bool, every: timedelta) -> tuple[Path, Path]:
    pipeline_dir = tmp_path / "pipeline"
    pipeline_dir.mkdir()
    runs = tmp_path / "runs.txt"
    (pipeline_dir / "record.py").write_text(RECORD.format(path=str(runs)))
    (pipeline_dir / "pipeline.yaml").write_text(
        PIPELINE.format(catchup="true" if catchup else "false", every=every.seconds)
    )
    return pipeline_dir / "pipeline.yaml", runs


def recorded(runs: Path) -> list[tuple[datetime, datetime, datetime]]:
    """(logical date, data interval start, end) of every run, in the order they ran."""
    if not runs.exists():
        return []
    rows = []
    for line in runs.read_text().splitlines():
        logical, start, end = (datetime.fromisoformat(v) for v in line.split())
        rows.append((logical, start, end))
    return rows


def stop(running: Background) -> str:
    running.proc.send_signal(signal.SIGINT)
    result = running.wait(60)
    assert result.code in (0, 130), result.details
    assert "Traceback" not in result.output, result.details
    return result.output


def assert_consecutive(rows: list[tuple[datetime, datetime, datetime]], every: timedelta) -> None:
    for logical, start, end in rows:
        assert logical == start and end - start == every, rows
    for (_, _, end), (_, start, _) in itertools.pairwise(rows):
        assert start == end, f"a gap or a repeat between intervals: {rows}"


def test_run_keeps_firing_and_catches_up_every_missed_interval(cli: Cli, tmp_path: Path) -> None:
    every = timedelta(seconds=4)
    pipeline, runs = ticking(tmp_path, catchup=True, every=every)
    args = ("run", "--no-ui", pipeline, "-s", tmp_path / "state")
    running = cli.start(*args)
    wait_for(lambda: running.output().count("run SUCCEEDED") >= 3, 90, "three scheduled runs")
    first = stop(running)
    assert "firing the schedule; Ctrl-C to stop" in first, first
    # The progress view showed successive runs, each with its logical date.
    shown = [line for line in first.splitlines() if line.startswith("run default/ticking/")]
    assert len(shown) >= 3, first
    assert first.count("run SUCCEEDED") >= 3, first
    before = recorded(runs)
    assert_consecutive(before, every)
    time.sleep(8)  # two intervals or more end with nothing running
    down_until = datetime.now(before[-1][0].tzinfo)
    running = cli.start(*args)
    wait_for(
        lambda: any(start > down_until for _, start, _ in recorded(runs)), 90, "a run after the gap"
    )
    stop(running)
    after = recorded(runs)
    # Every interval from before the stop through the downtime ran, once and in order.
    assert_consecutive(after, every)
    assert sum(1 for _, _, end in after[len(before) :] if end <= down_until) >= 2, after


def test_without_catchup_a_restart_runs_only_the_latest_interval(cli: Cli, tmp_path: Path) -> None:
    every = timedelta(seconds=2)
    pipeline, runs = ticking(tmp_path, catchup=False, every=every)
    args = ("run", "--no-ui", pipeline, "-s", tmp_path / "state")
    running = cli.start(*args)
    wait_for(lambda: len(recorded(runs)) >= 2, 90, "two scheduled runs")
    stop(running)
    before = recorded(runs)
    assert_consecutive(before, every)
    time.sleep(7)
    restarted_at = datetime.now(before[-1][0].tzinfo)
    running = cli.start(*args)
    wait_for(lambda: len(recorded(runs)) >= len(before) + 2, 90, "two runs after the restart")
    stop(running)
    after = recorded(runs)
    resumed = after[len(before)]
    # The first run after the restart is the latest complete interval at the restart: the
    # intervals of the downtime before it were not run.
    assert resumed[1] - before[-1][2] >= 2 * every, after
    assert restarted_at - every - timedelta(seconds=1) <= resumed[2], (restarted_at, after)
    assert_consecutive(after[len(before) :], every)
    assert len({row[0] for row in after}) == len(after)  # no interval ran twice
