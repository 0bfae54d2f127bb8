"""`laminar validate`, and `laminar run` refusing bad input before anything starts: a non-zero
exit, the list of problems, never a Python traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Cli, Result

BAD_PIPELINE = """\
name: broken
steps:
  - id: load
    type: sql
    sql: SELECT 1
    timeout: 5 parsecs
  - id: load
    type: noop
  - id: report
    type: noop
    depends_on: [lod]
"""
BAD_PROBLEMS = (
    "steps[0].timeout: invalid duration '5 parsecs'",
    "steps[1].id: duplicate step id 'load' (also steps[0])",
    "steps[2].depends_on: unknown step 'lod' (did you mean 'load'?)",
)


def assert_clean(result: Result) -> None:
    assert "Traceback" not in result.output, result.details


@pytest.fixture
def bad_pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(BAD_PIPELINE)
    return path


# --- laminar validate --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "name", "levels"),
    [
        (
            "sales_report.yaml",
            "sales-report",
            ["load_sales", "by_region, by_product", "summary", "report"],
        ),
        ("hello.yaml", "hello", ["greet", "done"]),
    ],
)
def test_validate_example(cli: Cli, example: str, name: str, levels: list[str]) -> None:
    result = cli.run("validate", EXAMPLES / example, timeout=30)
    assert result.code == 0, result.details
    assert_clean(result)
    assert f"pipeline '{name}' is valid" in result.stdout
    assert f"in {len(levels)} levels" in result.stdout
    for i, level in enumerate(levels, 1):
        assert f"level {i}: {level}\n" in result.stdout, result.details


def test_validate_reports_every_problem_with_its_path(cli: Cli, bad_pipeline: Path) -> None:
    result = cli.run("validate", bad_pipeline, timeout=30)
    assert result.code == 2, result.details
    assert_clean(result)
    assert f"{bad_pipeline}: 3 problem(s)" in result.stderr
    for problem in BAD_PROBLEMS:
        assert problem in result.stderr, result.details


def test_validate_missing_file(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("validate", tmp_path / "nope.yaml", timeout=30)
    assert result.code != 0, result.details
    assert_clean(result)
    assert "no such pipeline file" in result.stderr and "nope.yaml" in result.stderr


def test_validate_billion_laughs(cli: Cli, tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    lines.append("name: laughs\nsteps: *a9")
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    result = cli.run("validate", path, timeout=30)
    assert result.code == 2, result.details
    assert_clean(result)
    assert "<document>: aliases expand the document to more than" in result.stderr
    # Refused while parsing, before anything is expanded: only interpreter start-up time.
    assert result.elapsed < 10, result.details


# --- laminar run with bad input: refused before the embedded stack starts -----------------------


def test_run_invalid_pipeline_lists_all_problems(
    cli: Cli, bad_pipeline: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    result = cli.run("run", "--once", bad_pipeline, "--no-ui", "--state-dir", state, timeout=30)
    assert result.code == 2, result.details
    assert_clean(result)
    assert "pipeline is not valid (3 problem(s))" in result.stderr
    for problem in BAD_PROBLEMS:
        assert problem in result.stderr, result.details
    assert not state.exists()  # nothing was started or created


def test_run_missing_pipeline_file(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("run", "--once", tmp_path / "nope.yaml", "--no-ui", timeout=30)
    assert result.code == 2, result.details
    assert_clean(result)
    assert f"no such pipeline file: {tmp_path / 'nope.yaml'}" in result.stderr


def test_run_param_without_equals(cli: Cli, tmp_path: Path) -> None:
    result = cli.run(
        "run", "--once", EXAMPLES / "hello.yaml", "--no-ui", "--state-dir", tmp_path / "state",
        "--param", "greeting", "--param", "=oops", "--param", "greeting=ok",
        timeout=30,
    )  # fmt: skip
    assert result.code == 2, result.details
    assert_clean(result)
    assert "bad --param (expected key=value)" in result.stderr
    assert "  greeting\n" in result.stderr and "  =oops\n" in result.stderr
    assert "greeting=ok" not in result.stderr


def test_run_unknown_and_badly_typed_params(cli: Cli, tmp_path: Path) -> None:
    result = cli.run(
        "run", "--once", EXAMPLES / "sales_report.yaml", "--no-ui",
        "--state-dir", tmp_path / "state",
        "--param", "min_quantiy=3", "--param", "min_quantity=lots",
        timeout=30,
    )  # fmt: skip
    assert result.code == 2, result.details
    assert_clean(result)
    assert "params.min_quantiy: unknown param (did you mean 'min_quantity'?)" in result.stderr
    assert "params.min_quantity: expected an integer, got string 'lots'" in result.stderr


def test_run_missing_config_file(cli: Cli, tmp_path: Path) -> None:
    result = cli.run(
        "run",
        "--once",
        EXAMPLES / "hello.yaml",
        "--no-ui",
        "--config",
        tmp_path / "nope.yaml",
        timeout=30,
    )
    assert result.code == 2, result.details
    assert_clean(result)
    assert "no such config file" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("LAMINAR_PARALLELISM", "zero", "parallelism: Input should be a valid integer"),
        ("LAMINAR_PARALLELISM", "0", "parallelism: Input should be greater than or equal to 1"),
        ("LAMINAR_PARAMS", "not json", 'error parsing value for field "params"'),
    ],
)
def test_run_bad_settings_from_environment(
    cli: Cli, tmp_path: Path, variable: str, value: str, problem: str
) -> None:
    result = cli.run(
        "run", "--once", EXAMPLES / "hello.yaml", "--no-ui", "--state-dir", tmp_path / "state",
        env={variable: value},
        timeout=30,
    )  # fmt: skip
    assert result.code == 2, result.details
    assert_clean(result)
    assert "bad settings:" in result.stderr
    assert problem in result.stderr, result.details


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("paralelism: 4\nui: false\n", "paralelism: Extra inputs are not permitted"),
        ("parallelism: many\n", "parallelism: Input should be a valid integer"),
        ("- state_dir\n", "must be a YAML mapping"),
        ("state_dir: [unclosed\n", "cannot read config file"),
    ],
)
def test_run_bad_config_file(cli: Cli, tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "laminar.yaml"
    config.write_text(text)
    state = tmp_path / "state"
    result = cli.run(
        "run", "--once", EXAMPLES / "hello.yaml", "--no-ui", "--state-dir", state,
        "--config", config,
        timeout=30,
    )  # fmt: skip
    assert result.code == 2, result.details
    assert_clean(result)
    assert problem in result.stderr, result.details
    assert not state.exists()  # refused before anything started
