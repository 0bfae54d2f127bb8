"""Flink steps without a cluster: definitions, template values as literals, job settings, the
`flink run` command, and reading the REST API's answers."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import STREAMING_TIMEOUT, FlinkStep
from schemas.run import RunContext
from steps.base import StepError
from steps.flink import savepoint_wait, until_left
from steps.flink_job import (
    SQL_DRIVER,
    FlinkOptions,
    job_config,
    render_flink_sql,
    sql_command,
    sql_literal,
)
from steps.flink_rest import exception_headline, vertex_progress
from steps.flink_stream import (
    newest_saved_point,
    points_of,
    record_point,
    recorded_point,
    watch_details,
)

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
        conf={"table.exec.mini-batch.enabled": "true", "execution.checkpointing.interval": "5 s"},
    )
    options = FlinkOptions(rest_url="http://jm.example:8081")
    config = job_config(step, options, "tag1", "/sp/savepoint-1")
    assert config == {
        "table.exec.mini-batch.enabled": "true",
        "execution.checkpointing.interval": "5 s",  # the step's own
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.dir": "file:///sp/checkpoints",
        "execution.target": "remote",
        "rest.address": "jm.example",
        "rest.port": "8081",
        "pipeline.name": "laminar-tag1",
        "execution.runtime-mode": "STREAMING",
        "parallelism.default": "3",
        "execution.state-recovery.path": "file:///sp/savepoint-1",
    }
    assert "execution.state-recovery.path" not in job_config(step, options, "tag1")
    batch = job_config(step.model_copy(update={"mode": "batch"}), options, "t", "/sp/x")
    assert not any(key.startswith("execution.checkpointing.dir") for key in batch)
    assert "execution.state-recovery.path" not in batch
    with pytest.raises(StepError, match="no Flink cluster configured"):
        job_config(step, FlinkOptions(), "t")
    with pytest.raises(StepError, match="must look like"):
        job_config(step, FlinkOptions(rest_url="jm:8081"), "t")
    # The command is pure logic: a tool dir laid out like `make flink`'s install will do.
    tools = tmp_path / "tools"
    (tools / "pyflink" / "bin").mkdir(parents=True)
    (tools / "pyflink" / "bin" / "jobmanager.sh").touch()
    argv = sql_command(FlinkOptions(python="/py", tool_dir=tools), tmp_path / "job.json", "tag1")
    assert argv == [
        str(tools / "pyflink" / "bin" / "flink"),
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


def test_streaming_steps_say_how_they_end(tmp_path: Path) -> None:
    sql = {"sql": "INSERT INTO t SELECT 1"}
    forever = FlinkStep.model_validate({"id": "f", "type": "flink", "mode": "streaming", **sql})
    assert forever.until is None and forever.timeout == STREAMING_TIMEOUT
    bounded = FlinkStep.model_validate(
        {"id": "f", "type": "flink", "mode": "streaming", "until": "2h", **sql}
    )
    assert bounded.until == timedelta(hours=2) and bounded.timeout > bounded.until
    named = {"id": "f", "type": "flink", "mode": "streaming", "until": "cancelled", **sql}
    assert FlinkStep.model_validate(named).until is None
    assert FlinkStep.model_validate(bounded.model_dump(mode="json")) == bounded
    assert problems({"until": "1h", **sql}, tmp_path) == [
        "steps[0]: 'until' applies to streaming steps (a batch job ends by itself)"
    ]
    [too_long] = problems({"mode": "streaming", "until": "2h", "timeout": "1h", **sql}, tmp_path)
    assert "'until' (7200s) must be shorter than 'timeout' (3600s)" in too_long
    [unknown] = problems({"mode": "streaming", "until": "forever", **sql}, tmp_path)
    assert unknown.startswith("steps[0].until:") and "use 'cancelled' or a duration" in unknown
    [relative] = problems({"mode": "streaming", "savepoint_path": "sp", **sql}, tmp_path)
    assert "must be an absolute path or a URI" in relative


def test_restore_points_come_from_rest_answers_and_savepoint_directories(tmp_path: Path) -> None:
    stats = {
        "counts": {"completed": 7, "failed": 1},
        "latest": {
            "completed": {
                "id": 7,
                "is_savepoint": False,
                "latest_ack_timestamp": 2000,
                "external_path": "file:/cp/job/chk-7",
            },
            "savepoint": {
                "id": 5,
                "is_savepoint": True,
                "latest_ack_timestamp": 1000,
                "external_path": "file:/sp/savepoint-1",
            },
            "restored": {"id": 3, "external_path": "file:/sp/savepoint-0"},
        },
    }
    points = points_of("job", stats)
    assert [(p.kind, p.checkpoint_id, p.path) for p in points] == [
        ("checkpoint", 7, "file:/cp/job/chk-7"),
        ("savepoint", 5, "file:/sp/savepoint-1"),
    ]
    in_memory = {
        "latest": {"completed": {"id": 1, "external_path": "<checkpoint-not-externalized>"}}
    }
    assert points_of("job", in_memory) == [] and points_of("job", {}) == []
    details = watch_details({"jid": "job", "state": "RUNNING", "vertices": []}, stats)
    assert details["checkpoint"] == 7 and details["checkpoints_completed"] == 7
    assert details["restored_from"] == "file:/sp/savepoint-0"
    assert details["checkpoint_at"].startswith("1970-01-01T00:00:02")

    assert newest_saved_point(str(tmp_path / "nothing-yet")) is None
    assert not (tmp_path / "nothing-yet").exists()  # looking does not create it
    assert newest_saved_point(str(tmp_path)) is None
    for name in ("savepoint-a", "savepoint-b", "savepoint-empty"):
        (tmp_path / name).mkdir()
    (tmp_path / "savepoint-a" / "_metadata").write_bytes(b"x")
    (tmp_path / "savepoint-b" / "_metadata").write_bytes(b"x")
    os.utime(tmp_path / "savepoint-a" / "_metadata", (1, 1))
    os.utime(tmp_path / "savepoint-b" / "_metadata", (2, 2))
    newest = newest_saved_point(f"file://{tmp_path}")
    assert newest is not None and newest.path == str(tmp_path / "savepoint-b")
    assert newest.kind == "savepoint"
    direct = newest_saved_point(str(tmp_path / "savepoint-a"))  # the path is a savepoint itself
    assert direct is not None and direct.path == str(tmp_path / "savepoint-a")
    # A retained checkpoint newer than the savepoints (Flink's `<job id>/chk-N/_metadata`).
    job = "0123456789abcdef0123456789abcdef"
    (tmp_path / "checkpoints" / job / "chk-12").mkdir(parents=True)
    (tmp_path / "checkpoints" / job / "chk-12" / "_metadata").write_bytes(b"x")
    os.utime(tmp_path / "checkpoints" / job / "chk-12" / "_metadata", (3, 3))
    (tmp_path / "checkpoints" / job / "shared").mkdir()
    (tmp_path / "checkpoints" / job / "shared" / "state-file").write_bytes(b"x")
    newest = newest_saved_point(str(tmp_path))
    assert newest is not None and newest.path == str(tmp_path / "checkpoints" / job / "chk-12")
    assert (newest.kind, newest.job_id, newest.checkpoint_id) == ("checkpoint", job, 12)

    assert recorded_point(tmp_path) is None
    record_point(tmp_path, points[0])
    assert recorded_point(tmp_path) == points[0]


def test_until_counts_from_the_steps_first_start_and_savepoints_fit_the_attempt() -> None:
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    assert until_left(hour, None) == 3600  # no start known: a full `until` from now
    assert 1190 <= until_left(hour, now - timedelta(minutes=40)) <= 1200
    assert until_left(hour, now - 2 * hour) == 0  # a retry after `until`: stop at once
    # The savepoint wait: the configured limit, unless the attempt's deadline is nearer (a
    # step timeout leaves the workflow's 10 s stop grace), less the margin to cancel.
    assert savepoint_wait(60, None) == 60
    assert savepoint_wait(60, now + timedelta(minutes=5)) == 60
    assert 6 <= savepoint_wait(60, now + timedelta(seconds=10)) <= 7
    assert savepoint_wait(60, now + timedelta(seconds=2)) == 0
    assert savepoint_wait(60, now - timedelta(seconds=5)) == 0


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
