"""The command-line contract: exit codes (0 ok, 1 run failed, 2 bad input, 130/143 signals),
every option's bad input as a message and exit 2 (never `internal error`/3 or a traceback),
params precedence per key, quiet libraries, signals at awkward moments."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Cli, Result, wait_for

HELLO = EXAMPLES / "hello.yaml"


def assert_bad_input(result: Result, *messages: str) -> None:
    assert result.code == 2, result.details
    assert "Traceback" not in result.output, result.details
    assert "internal error" not in result.output, result.details
    for message in messages:
        assert message in result.stderr, result.details


# --- laminar validate ----------------------------------------------------------------------


def test_validate_exits_2_for_an_invalid_definition(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsteps: []\n")
    assert_bad_input(cli.run("validate", path, timeout=30), "1 problem(s)")


def test_validate_reads_stdin(cli: Cli) -> None:
    good = "name: piped\nsteps:\n  - {id: a, type: sql, sql: SELECT 1}\n"
    result = cli.run("validate", "-", input=good, timeout=30)
    assert result.code == 0, result.details
    assert "pipeline 'piped' is valid" in result.stdout
    bad = "name: piped\nsteps:\n  - {id: a, type: sql, sql: SELEC 1}\n"
    assert_bad_input(cli.run("validate", "-", input=bad, timeout=30), "steps[0].sql")
    binary = "name: \udcff\n"  # a lone surrogate: encoded with errors=surrogateescape below
    result = cli.run("validate", "-", input=binary, timeout=30)
    assert_bad_input(result, "stdin is not UTF-8 text")


def test_validate_a_directory_says_so(cli: Cli, tmp_path: Path) -> None:
    assert_bad_input(cli.run("validate", tmp_path, timeout=30), "is a directory")


def test_library_warnings_do_not_reach_the_terminal(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "pivot.yaml"
    path.write_text(
        "name: pivot\nsteps:\n  - id: p\n    type: sql\n"
        "    sql: CREATE TABLE p AS PIVOT (SELECT 1 AS a, 2 AS b) ON a USING sum(b)\n"
    )
    result = cli.run("validate", path, timeout=30)
    assert result.code == 0, result.details
    assert "unsupported syntax" not in result.output, result.details
    assert result.stderr == "", result.details


# --- laminar run: every option's bad input -------------------------------------------------


def test_run_a_directory_as_pipeline_file(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("run", "--once", tmp_path, "--no-ui", timeout=30)
    assert_bad_input(result, f"{tmp_path} is a directory, not a pipeline file")


def test_state_dir_that_is_a_file(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory")
    result = cli.run("run", "--once", HELLO, "--no-ui", "--state-dir", state, timeout=30)
    assert_bad_input(result, f"state dir {state}: it is a file, not a directory")
    result = cli.run("run", "--once", HELLO, "--no-ui", "--state-dir", state / "x", timeout=30)
    assert_bad_input(result, f"state dir {state / 'x'}:")


def test_state_dir_that_is_not_writable(cli: Cli, tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    # Root writes anywhere on a normal file system, not under /sys.
    state = Path("/sys/laminar-state") if os.geteuid() == 0 else parent / "state"
    try:
        result = cli.run("run", "--once", HELLO, "--no-ui", "--state-dir", state, timeout=30)
        assert_bad_input(result, f"state dir {state}: ")
    finally:
        parent.chmod(0o700)


def test_binary_sql_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "data.sql"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    result = cli.run("run", "--once", "--sql-file", path, "--no-ui", timeout=30)
    assert_bad_input(result, f"SQL file {path} is not UTF-8 text")


def test_huge_sql_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "huge.sql"
    path.write_text("SELECT 1;\n" * 200_000)
    result = cli.run("run", "--once", "--sql-file", path, "--no-ui", timeout=30)
    assert_bad_input(result, f"SQL file {path} is larger than 1 MiB")


def test_directory_as_sql_file_and_config(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("run", "--once", "--sql-file", tmp_path, "--no-ui", timeout=30)
    assert_bad_input(result, f"{tmp_path} is a directory, not a SQL file")
    result = cli.run("run", "--once", HELLO, "--config", tmp_path, "--no-ui", timeout=30)
    assert_bad_input(result, f"{tmp_path} is a directory, not a config file")


def test_binary_config_file(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\xff\xfe\x00bad")
    result = cli.run("run", "--once", HELLO, "--config", config, "--no-ui", timeout=30)
    assert_bad_input(result, f"Config file {config} is not UTF-8 text")


def test_bad_name_option(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("run", "--once", HELLO, "--name", "Bad Name", "--no-ui", timeout=30)
    assert_bad_input(result, "name: 'Bad Name' is not allowed")


@pytest.mark.parametrize("option", ["--state-dir", "--name", "--sql-file"])
def test_empty_option_values_are_refused(cli: Cli, tmp_path: Path, option: str) -> None:
    # An empty --state-dir used to mean the current directory, silently.
    args = ("--sql", "SELECT 1") if option == "--sql-file" else (HELLO,)
    result = cli.run("run", "--once", *args, option, "", "--no-ui", timeout=30)
    assert_bad_input(result, f"{option[2:].replace('-', '_')}: must not be empty")
    assert not (tmp_path / "laminar-state.json").exists()


def test_sql_file_name_is_derived_from_the_file_name(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "Daily_Report.v2.sql"
    path.write_text("CREATE TABLE t AS SELECT 1 AS x")
    state = tmp_path / "state"
    result = cli.run("run", "--once", "--sql-file", path, "--no-ui", "--state-dir", state)
    assert result.code == 0, result.details
    assert "pipeline name 'daily_report_v2' (from the file name" in result.output, result.details


# --- params precedence: command line > environment > config file > pipeline defaults ---------


def test_params_merge_per_key_across_sources(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "show.py").write_text(
        "import json, os\n"
        "ctx = json.load(open(os.environ['LAMINAR_CONTEXT']))\n"
        "json.dump(ctx['params'], open(os.environ['LAMINAR_RESULT'], 'w'))\n"
    )
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: prec\nparams: {a: default, b: default, c: default, d: default}\n"
        "steps:\n  - {id: show, type: python, script: show.py}\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text("params: {a: file, b: file, c: file}\n")
    state = tmp_path / "state"
    result = cli.run(
        "run", "--once", pipeline, "--no-ui", "--state-dir", state, "--config", config,
        "-p", "a=cli",
        env={"LAMINAR_PARAMS": json.dumps({"a": "env", "b": "env"})},
    )  # fmt: skip
    assert result.code == 0, result.details
    for key, source in {"a": "cli", "b": "env", "c": "file", "d": "default"}.items():
        assert f"show.{key} = {source}" in result.stdout, result.details


# --- signals -------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8])
def test_sigint_during_start_up_exits_130_quietly(cli: Cli, tmp_path: Path, delay: float) -> None:
    proc = cli.start("run", "--once", HELLO, "--no-ui", "--state-dir", tmp_path / "state")
    # Counted from laminar's own start-up (its state dir appears), not the interpreter's: a
    # SIGINT while CPython still imports `site` ends it with CPython's own fatal error.
    wait_for(lambda: (tmp_path / "state").exists(), 60, "laminar to start")
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGINT)
    result = proc.wait(60)
    if "run SUCCEEDED" in result.output:
        pytest.skip("the run finished before the signal")
    assert result.code == 130, result.details
    assert "Traceback" not in result.output and "KeyboardInterrupt" not in result.output
    assert "internal error" not in result.output, result.details


def test_sigint_after_the_run_finished_reports_its_outcome(cli: Cli, tmp_path: Path) -> None:
    # Without --once the cluster serves after the run; Ctrl-C then exits with the run's status.
    proc = cli.start("run", HELLO, "--no-ui", "--state-dir", tmp_path / "state")
    wait_for(lambda: "serving" in proc.output(), 60, "the run to finish")
    os.kill(proc.pid, signal.SIGINT)
    result = proc.wait(60)
    assert result.code == 0, result.details
