"""Sensor steps: validation (path-precise) and one check of each condition kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import SensorStep
from steps.base import StepError
from steps.engines.duckdb import DuckDBEngine
from steps.sensor import SensorExecutor
from steps.sql import SqlExecutor
from tests.unit.test_steps import make_ctx
from workflows.sensors import describe


def problems(step: dict[str, Any], tmp_path: Path) -> list[str]:
    data = {"name": "p", "steps": [{"id": "wait", "type": "sensor", **step}]}
    with pytest.raises(PipelineValidationError) as info:
        validate_pipeline(data, source_dir=tmp_path)
    return [str(p) for p in info.value.problems]


def sensor(**fields: Any) -> SensorStep:
    return SensorStep.model_validate({"id": "wait", "type": "sensor", **fields})


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({}, "steps[0]: a sensor needs exactly one of 'file' or 'sql'"),
        ({"file": "a", "sql": "SELECT 1"}, "steps[0]: a sensor needs exactly one of"),
        ({"file": "../outside.csv"}, "steps[0].file: use a path inside the pipeline directory"),
        ({"file": "/etc/passwd"}, "steps[0].file: use a path inside the pipeline directory"),
        ({"file": "s3://bucket/key"}, "steps[0].file: object-store URLs are not supported"),
        ({"file": "a", "poke_interval": "2h"}, "steps[0]: poke_interval: must not be longer"),
        ({"file": "{{ params.nope }}"}, "steps[0].file: unknown param 'nope'"),
        ({"sql": "SELECT 1", "engine": "trino"}, "steps[0]: engine 'trino' needs a connection"),
        ({"file": "a", "upstream": {"pipeline": "o"}}, "steps[0].upstream: sensors cannot wait"),
    ],
)
def test_invalid_sensors_are_reported_at_their_path(
    step: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    found = problems(step, tmp_path)
    assert any(p.startswith(expected) for p in found), found


async def test_file_check_says_whether_the_file_exists(
    tmp_path: Path, engine: DuckDBEngine
) -> None:
    source = tmp_path / "pipeline"
    source.mkdir()
    executor = SensorExecutor(SqlExecutor(engine))
    step = sensor(file="in/{{ ds }}.csv")
    ctx = make_ctx(tmp_path, source)
    assert (await executor.execute(step, ctx)).outputs == {
        "met": False,
        "file": "in/2026-01-31.csv",
    }
    (source / "in").mkdir()
    (source / "in" / "2026-01-31.csv").write_text("x")
    assert (await executor.execute(step, ctx)).outputs["met"] is True


async def test_file_check_refuses_a_symlink_out_of_the_pipeline_dir(
    tmp_path: Path, engine: DuckDBEngine
) -> None:
    source = tmp_path / "pipeline"
    source.mkdir()
    (tmp_path / "secret").write_text("x")
    (source / "link").symlink_to(tmp_path / "secret")
    executor = SensorExecutor(SqlExecutor(engine))
    with pytest.raises(StepError) as info:
        await executor.execute(sensor(file="link"), make_ctx(tmp_path, source))
    assert "resolves outside the pipeline directory" in str(info.value)
    assert not info.value.retryable


@pytest.mark.parametrize(
    ("query", "met"),
    [
        ("SELECT true", True),
        ("SELECT false", False),
        ("SELECT 0", False),
        ("SELECT 3", True),
        ("SELECT NULL", False),
        ("SELECT 'no'", False),
        ("SELECT 1 WHERE false", False),  # no row
        ("SELECT {{ params.n }} > 2", True),  # a bound value
    ],
)
async def test_sql_check_is_the_first_value_of_the_first_row(
    query: str, met: bool, tmp_path: Path, engine: DuckDBEngine
) -> None:
    executor = SensorExecutor(SqlExecutor(engine))
    result = await executor.execute(
        sensor(sql=query), make_ctx(tmp_path, tmp_path, params={"n": 5})
    )
    assert result.outputs["met"] is met


def test_description_names_the_condition() -> None:
    assert describe(sensor(file="a.csv")) == "file 'a.csv' to appear in the pipeline directory"
    assert describe(sensor(sql="SELECT 1")) == "query on duckdb to return true: 'SELECT 1'"
