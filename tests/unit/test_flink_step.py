"""Flink steps without a cluster: definitions, template values as literals, job settings, the
`flink run` command, and reading the REST API's answers."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import FlinkStep
from schemas.run import RunContext
from steps.base import StepError
from steps.flink_job import (
    SQL_DRIVER,
    FlinkOptions,
    job_config,
    render_flink_sql,
    sql_command,
    sql_literal,
)
from steps.flink_rest import exception_headline, vertex_progress

RUN = RunContext.manual("p", "default/p/2026-01-31", datetime(2026, 1, 31, tzinfo=UTC), {})


def problems(step: dict[str, Any], tmp_path: Path) -> list[str]:
    doc = {"name": "p", "steps": [{"id": "f", "type": "flink", **step}]}
    with pytest.raises(PipelineValidationError) as info:
        validate_pipeline(doc, source_dir=tmp_path)
    return [str(p) for p in info.value.problems]


def test_valid_flink_steps_load(tmp_path: Path) -> None:
    (tmp_path / "job.jar").write_bytes(b"PK")
    doc = {
        "name": "p",
        "params": {"n": 5},
        "steps": [
            {"id": "q", "type": "flink", "sql": "SELECT {{ params.n }}", "parallelism": 2},
            {
                "id": "j",
                "type": "flink",
                "jar": "job.jar",
                "entry_class": "com.acme.Job",
                "args": ["--day", "{{ ds }}"],
                "mode": "streaming",
                "savepoint_path": "file:///savepoints/j",
                "conf": {"table.exec.resource.default-parallelism": "2"},
            },
        ],
    }
    pipeline = validate_pipeline(doc, source_dir=tmp_path)
    assert isinstance(pipeline.steps[1], FlinkStep) and pipeline.steps[1].mode == "streaming"


@pytest.mark.parametrize(
    ("step", "path", "phrase"),
    [
        ({}, "steps[0]", "exactly one of 'sql' or 'jar'"),
        ({"sql": "SELECT 1", "args": ["x"]}, "steps[0]", "go with a 'jar'"),
        ({"jar": "job.zip"}, "steps[0]", "must be a .jar"),
        ({"jar": "../job.jar"}, "steps[0].jar", "escapes the pipeline"),
        ({"sql": "SELECT 1", "mode": "micro"}, "steps[0].mode", "'batch' or 'streaming'"),
        ({"sql": "SELECT 1", "conf": {"rest.port": "1"}}, 'steps[0].conf["rest.port"]', "Laminar"),
        ({"sql": "SELECT 1", "conf": {"Bad Key": "1"}}, 'steps[0].conf["Bad Key"]', "not a Flink"),
        ({"sql": "SELECT {{ params.x }}"}, "steps[0].sql", "unknown param 'x'"),
    ],
)
def test_invalid_flink_steps_are_reported_with_paths(
    tmp_path: Path, step: dict[str, Any], path: str, phrase: str
) -> None:
    found = problems(step, tmp_path)
    assert any(p.startswith(f"{path}: ") and phrase in p for p in found), found


def test_template_values_become_escaped_typed_literals() -> None:
    assert sql_literal("O'Brien'); DROP TABLE t; --") == "'O''Brien''); DROP TABLE t; --'"
    assert sql_literal(3) == "3" and sql_literal(True) == "TRUE" and sql_literal(None) == "NULL"
    assert sql_literal(date(2026, 1, 31)) == "DATE '2026-01-31'"
    assert sql_literal(datetime(2026, 1, 31, 1, 2, 3, tzinfo=UTC)) == (
        "TIMESTAMP '2026-01-31 01:02:03'"
    )
    with pytest.raises(StepError):
        sql_literal(float("nan"))
    run = RUN.model_copy(update={"params": {"who": "x'; DROP TABLE t; --"}})
    # A value in a comment cannot end it and start a statement of its own.
    newline = RUN.model_copy(update={"params": {"who": "a\nDROP TABLE t; */"}})
    assert render_flink_sql("/* {{ params.who }} */ SELECT 1; -- {{ params.who }}", newline) == [
        "/* a DROP TABLE t; * / */ SELECT 1"
    ]
    statements = render_flink_sql(
        "CREATE TABLE t (a STRING);\nINSERT INTO t SELECT {{ params.who }} || ';';", run
    )
    assert statements == [
        "CREATE TABLE t (a STRING)",
        "INSERT INTO t SELECT 'x''; DROP TABLE t; --' || ';'",
    ]
    # Inside a quoted string (connector options take plain literals) the value is its text.
    inside = render_flink_sql(
        "-- it's a comment: {{ params.who }}\n"
        "CREATE TABLE s (a INT) WITH ('path' = '/data/{{ params.who }}/{{ ds }}', "
        "`it's` = '{{ logical_date }}');",
        run,
    )
    assert inside == [
        "-- it's a comment: x'; DROP TABLE t; --\n"
        "CREATE TABLE s (a INT) WITH ('path' = '/data/x''; DROP TABLE t; --/2026-01-31', "
        "`it's` = '2026-01-31 00:00:00')"
    ]


def test_job_settings_put_the_platform_last(tmp_path: Path) -> None:
    step = FlinkStep(
        id="f",
        type="flink",
        sql="SELECT 1",
        parallelism=3,
        mode="streaming",
        savepoint_path="file:///sp",
        conf={"table.exec.mini-batch.enabled": "true"},
    )
    config = job_config(step, FlinkOptions(rest_url="http://jm.example:8081"), "tag1")
    assert config == {
        "table.exec.mini-batch.enabled": "true",
        "execution.target": "remote",
        "rest.address": "jm.example",
        "rest.port": "8081",
        "pipeline.name": "laminar-tag1",
        "execution.runtime-mode": "STREAMING",
        "parallelism.default": "3",
        "execution.state-recovery.path": "file:///sp",
    }
    with pytest.raises(StepError, match="no Flink cluster configured"):
        job_config(step, FlinkOptions(), "t")
    with pytest.raises(StepError, match="must look like"):
        job_config(step, FlinkOptions(rest_url="jm:8081"), "t")
    argv = sql_command(FlinkOptions(python="/py"), tmp_path / "job.json", "tag1")
    assert argv[1:] == [
        "run",
        "-py",
        str(SQL_DRIVER),
        "-pyclientexec",
        "/py",
        str(tmp_path / "job.json"),
        "laminar-tag=tag1",
    ]


def test_missing_flink_distribution_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="make flink"):
        sql_command(FlinkOptions(tool_dir=tmp_path), tmp_path / "job.json", "t")


def test_rest_answers_become_progress_and_a_headline() -> None:
    job = {
        "jid": "abc",
        "state": "RUNNING",
        "vertices": [
            {"status": "FINISHED", "parallelism": 2, "tasks": {"FINISHED": 2}},
            {"status": "RUNNING", "parallelism": 2, "tasks": {"FINISHED": 1, "RUNNING": 1}},
        ],
    }
    assert vertex_progress(job) == {
        "job_id": "abc",
        "state": "RUNNING",
        "vertices": "1/2",
        "subtasks": "3/4",
    }
    trace = (
        "org.apache.flink.runtime.JobException: Recovery is suppressed\n\tat x.y(Z.java:1)\n"
        "Caused by: java.lang.RuntimeException: wrapped\n\tat a.b(C.java:2)\n"
        "Caused by: java.lang.ArithmeticException: / by zero\n\tat d.e(F.java:3)\n"
    )
    assert exception_headline(trace) == "java.lang.ArithmeticException: / by zero"
    assert exception_headline("just text") == "just text"


def test_ident_makes_a_backtick_quoted_flink_identifier(tmp_path: Path) -> None:
    """Validation accepts `{{ x | ident }}` in Flink SQL; the run renders it as a name."""
    sql = (
        "INSERT INTO {{ params.sink | ident }} SELECT {{ params.sink }} AS s "
        "FROM `{{ params.sink | ident }}_src` WHERE a = '{{ params.sink | ident }}';"
    )
    doc = {
        "name": "p",
        "params": {"sink": "x"},
        "steps": [{"id": "f", "type": "flink", "sql": sql}],
    }
    validate_pipeline(doc, source_dir=tmp_path)
    run = RUN.model_copy(update={"params": {"sink": "odd`name"}})
    assert render_flink_sql(sql, run) == [
        "INSERT INTO `odd``name` SELECT 'odd`name' AS s "
        "FROM `odd``name_src` WHERE a = '`odd``name`'"
    ]
    for bad in ("", 3, "a\x00b"):
        bad_run = RUN.model_copy(update={"params": {"sink": bad}})
        with pytest.raises(ValueError, match="ident"):
            render_flink_sql("SELECT 1 FROM {{ params.sink | ident }}", bad_run)
