"""`laminar run --log-format json`: every line on stdout is a JSON object with timestamp,
level, logger and message, and the run's context (tenant, pipeline, run id, step id, attempt)
where it applies — the cluster's messages, the step events and the worker's own records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cli
from tests.e2e.test_cli_run import HELLO, one_script_pipeline


def records(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is JSON, or this fails
    for record in parsed:
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), record
    return parsed


def test_json_logs_of_a_run_with_a_failing_attempt(cli: Cli, tmp_path: Path) -> None:
    args = one_script_pipeline(
        tmp_path,
        "flaky",
        "import os, pathlib, sys\n"
        "marker = pathlib.Path('attempted')\n"
        "first = not marker.exists()\n"
        "marker.touch()\n"
        "sys.exit(1 if first else 0)\n",
        "    retry: {max_attempts: 2, initial_interval: 100ms}\n",
    )
    log_file = tmp_path / "run.jsonl"
    result = cli.run(*args, "--log-format", "json", "--log-file", log_file)
    assert result.code == 0, result.details
    found = records(result.stdout)
    # Nothing on stderr but DuckDB's own note at interpreter exit ("nanobind: leaked ...
    # instances"), which it sometimes prints after a failed attempt; not Laminar's output.
    own = [line for line in result.stderr.splitlines() if "nanobind" not in line]
    assert not [line for line in own if not line.startswith(" - leaked")], result.details
    run_id = next(r["run_id"] for r in found if r["message"].startswith("run default/"))
    for record in found:
        assert record["tenant"] == "default" and record["pipeline"] == "flaky", record
    steps = [r for r in found if r["logger"] == "laminar.run" and "step_id" in r]
    assert [(r["status"], r["attempt"]) for r in steps][-1] == ("SUCCEEDED", 2)
    assert all(r["run_id"] == run_id for r in steps)
    worker = [r for r in found if r["logger"] == "temporalio.activity"]
    assert worker, result.details  # the worker's "activity failed" record, with its context
    assert worker[0]["step_id"] == "flaky" and worker[0]["attempt"] == 1
    assert worker[0]["run_id"] == run_id and worker[0]["level"] == "warning"
    end = found[[r["message"] for r in found].index("run SUCCEEDED")]
    assert end["steps"]["flaky"]["attempt"] == 2
    in_file = records(log_file.read_text())
    assert any(r["message"] == "run SUCCEEDED" for r in in_file)


def test_log_format_from_the_environment_and_a_bad_one(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = cli.run(
        "run", "--once", "--no-ui", HELLO, "-s", state, env={"LAMINAR_LOG_FORMAT": "json"}
    )
    assert result.code == 0, result.details
    assert any(r["message"] == "run SUCCEEDED" for r in records(result.stdout))

    quiet = cli.run(
        "run",
        "--once",
        "--no-ui",
        HELLO,
        "-s",
        state,
        "--log-format",
        "json",
        "--log-level",
        "warning",
    )
    assert quiet.code == 0, quiet.details
    assert all(r["level"] != "info" for r in records(quiet.stdout)), quiet.details

    bad = cli.run("run", "--once", "--no-ui", HELLO, "-s", state, "--log-format", "xml")
    assert bad.code == 2 and "--log-format must be text or json" in bad.stderr, bad.details

    invalid = cli.run("run", "--once", "--no-ui", "--sql", "SELEC 1", "--log-format", "json")
    assert invalid.code == 2, invalid.details
    problems = records(invalid.stdout)
    assert problems and all(r["level"] == "error" for r in problems), invalid.details
