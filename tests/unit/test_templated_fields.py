"""One list of templated fields per step type (`schemas.handoff_checks.templated_fields`):
validation checks those fields, and the workflow hands a step exactly the upstream results
those fields refer to. Spark and Flink steps were missing from the second use, so their
`{{ steps.<id>.result.<key> }}` failed to render at run time although validation passed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.handoff_checks import referenced_steps, templated_fields
from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import FlinkStep, PipelineDefinition, SparkStep, Step
from schemas.run import RunContext, UpstreamResult
from steps.flink_job import render_flink_sql
from steps.spark_submit import SparkOptions, submit_command, write_sql_job

RUN = RunContext.manual("p", "default/p/2026-01-31", datetime(2026, 1, 31, tzinfo=UTC), {})
RESULTS = {
    "up": UpstreamResult(result={"day": "2026-01-30", "n": 7}, tables={}),
    "other": UpstreamResult(result={"unused": True}, tables={}),
}


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline"
    (path / "jobs").mkdir(parents=True)
    (path / "up.py").write_text("print('up')\n")
    (path / "jobs" / "agg.py").write_text("print('agg')\n")
    (path / "jobs" / "app.jar").write_bytes(b"PK")
    return path


def pipeline(source_dir: Path, *steps: dict[str, Any]) -> PipelineDefinition:
    upstream = [
        {"id": "up", "type": "python", "script": "up.py"},
        {"id": "other", "type": "python", "script": "up.py"},
    ]
    chained = [{"depends_on": ["up", "other"], **step} for step in steps]
    return validate_pipeline({"name": "p", "steps": [*upstream, *chained]}, source_dir=source_dir)


def upstream_for(step: Step) -> dict[str, UpstreamResult]:
    """What PipelineRunWorkflow._upstream hands the step: the results its templates name."""
    return {step_id: RESULTS[step_id] for step_id in referenced_steps(step)}


def test_spark_steps_receive_the_upstream_results_their_templates_use(
    source_dir: Path, tmp_path: Path
) -> None:
    definition = pipeline(
        source_dir,
        {
            "id": "app",
            "type": "spark",
            "application": "jobs/agg.py",
            "args": ["--day", "{{ steps.up.result.day }}", "{{ steps.up.result.n * 2 }}"],
        },
        {"id": "q", "type": "spark", "sql": "SELECT {{ steps.up.result.n }} AS n"},
    )
    app, query = definition.step("app"), definition.step("q")
    assert isinstance(app, SparkStep) and isinstance(query, SparkStep)
    assert referenced_steps(app) == ["up"] and referenced_steps(query) == ["up"]
    argv = submit_command(
        app,
        SparkOptions(),
        run=RUN,
        step_id="app",
        attempt=1,
        tag="t",
        source_dir=source_dir,
        work_dir=tmp_path,
        upstream=upstream_for(app),
    )
    assert argv[-3:] == ["--day", "2026-01-30", "14"]
    job = json.loads(write_sql_job(query, RUN, tmp_path, upstream_for(query)).read_text())
    assert job["statements"] == ["SELECT :lam_0 AS n"]
    assert job["params"]["lam_0"] == {"type": "json", "value": 7}


def test_flink_steps_receive_the_upstream_results_their_templates_use(source_dir: Path) -> None:
    definition = pipeline(
        source_dir,
        {"id": "f", "type": "flink", "sql": "SELECT {{ steps.up.result.day }} AS d"},
        {
            "id": "j",
            "type": "flink",
            "jar": "jobs/app.jar",
            "args": ["--n={{ steps.up.result.n }}", "{{ steps.other.result.unused }}"],
        },
    )
    sql, jar = definition.step("f"), definition.step("j")
    assert isinstance(sql, FlinkStep) and isinstance(jar, FlinkStep)
    assert referenced_steps(sql) == ["up"]
    assert referenced_steps(jar) == ["other", "up"]
    assert sql.sql is not None
    assert render_flink_sql(sql.sql, RUN, upstream_for(sql)) == ["SELECT '2026-01-30' AS d"]


def test_templated_fields_name_every_rendered_field_with_its_path(source_dir: Path) -> None:
    app = SparkStep(id="a", type="spark", application="{{ params.f }}.py", args=["x", "y"])
    assert templated_fields(app) == [
        (("application",), "{{ params.f }}.py"),
        (("args", 0), "x"),
        (("args", 1), "y"),
    ]
    jar = FlinkStep(id="j", type="flink", jar="jobs/app.jar", args=["{{ ds }}"])
    assert templated_fields(jar) == [(("jar",), "jobs/app.jar"), (("args", 0), "{{ ds }}")]


def test_a_spark_or_flink_reference_to_a_step_not_upstream_is_reported_with_its_path(
    source_dir: Path,
) -> None:
    doc = {
        "name": "p",
        "steps": [
            {"id": "up", "type": "python", "script": "up.py"},
            {
                "id": "j",
                "type": "flink",
                "jar": "jobs/app.jar",
                "args": ["{{ steps.up.result.n }}"],
            },
            {"id": "s", "type": "spark", "application": "{{ steps.up.result.f }}.py"},
        ],
    }
    with pytest.raises(PipelineValidationError) as info:
        validate_pipeline(doc, source_dir=source_dir)
    messages = [str(p) for p in info.value.problems]
    assert any(m.startswith("steps[1].args[0]:") and "not upstream" in m for m in messages)
    assert any(m.startswith("steps[2].application:") and "not upstream" in m for m in messages)
