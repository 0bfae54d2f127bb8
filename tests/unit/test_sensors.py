"""Sensor steps: validation (path-precise) and one check of each condition kind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline_service.temporal.dev_server import free_port
from pipeline_service.temporal.sensor_probes import sensor_probes
from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import SensorStep
from steps.base import StepError
from steps.engines.duckdb import DuckDBEngine
from steps.sensor import SensorExecutor, SensorProbes
from steps.sql import SqlExecutor
from tests.s3_standin import CREDENTIALS, s3_standin
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
        ({}, "steps[0]: a sensor needs exactly one of 'file', 'sql' or 'upstream'"),
        ({"file": "a", "sql": "SELECT 1"}, "steps[0]: a sensor needs exactly one of"),
        ({"file": "a", "upstream": {"pipeline": "o"}}, "steps[0]: a sensor needs exactly one"),
        ({"file": "../outside.csv"}, "steps[0].file: use a path inside the pipeline directory"),
        ({"file": "/etc/passwd"}, "steps[0].file: use a path inside the pipeline directory"),
        ({"file": "file:///etc/passwd"}, "steps[0].file: scheme 'file://' is not an object store"),
        ({"file": "http://host/key"}, "steps[0].file: scheme 'http://' is not an object store"),
        ({"file": "s3://bucket"}, "steps[0].file: 's3://bucket' must name an object"),
        ({"file": "s3://b/in/../x"}, "steps[0].file: 's3://b/in/../x': '..' is not allowed"),
        ({"file": "s3://{{ ds }}/k"}, "steps[0].file: the scheme and bucket of a sensor's URL"),
        ({"file": "s3://b/{{ params.nope }}"}, "steps[0].file: unknown param 'nope'"),
        ({"file": "a", "poke_interval": "2h"}, "steps[0]: poke_interval: must not be longer"),
        ({"file": "{{ params.nope }}"}, "steps[0].file: unknown param 'nope'"),
        ({"sql": "SELECT 1", "engine": "trino"}, "steps[0]: engine 'trino' needs a connection"),
        ({"upstream": {"pipeline": "Not A Name"}}, "steps[0].upstream.pipeline:"),
        ({"upstream": {"pipeline": "o", "when": "x"}}, "steps[0].upstream.when:"),
        (
            {"upstream": {"pipeline": "o", "logical_date": "{{ params.nope }}"}},
            "steps[0].upstream.logical_date: unknown param 'nope'",
        ),
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
    url = sensor(file="s3://b/in/{{ ds }}.csv")
    assert describe(url, {"met": False, "file": "s3://b/in/2026-01-31.csv"}) == (
        "object 's3://b/in/2026-01-31.csv' to appear"
    )
    upstream = sensor(upstream={"pipeline": "orders"})
    last = {"met": False, "logical_date": "2026-01-31T00:00:00+00:00", "status": "FAILED"}
    assert describe(upstream, last) == (
        "the run of pipeline 'orders' for logical date 2026-01-31T00:00:00+00:00 to succeed "
        "(latest run: FAILED)"
    )
    assert describe(upstream, {**last, "status": None}).endswith("to succeed (no run yet)")


def test_valid_object_and_upstream_sensors(tmp_path: Path) -> None:
    data = {
        "name": "p",
        "params": {"day": "2026-01-30"},
        "steps": [
            {"id": "obj", "type": "sensor", "file": "s3://landing/orders/{{ ds }}.csv"},
            {"id": "up", "type": "sensor", "upstream": {"pipeline": "orders"}},
            {
                "id": "day",
                "type": "sensor",
                "upstream": {"pipeline": "orders", "logical_date": "{{ params.day }}"},
            },
        ],
    }
    steps = validate_pipeline(data, source_dir=tmp_path).steps
    assert [s.upstream.logical_date if s.upstream else None for s in steps] == [  # type: ignore[union-attr]
        None,
        "{{ logical_date }}",
        "{{ params.day }}",
    ]


async def test_upstream_check_asks_for_the_rendered_date_in_the_runs_tenant(
    tmp_path: Path, engine: DuckDBEngine
) -> None:
    asked: list[tuple[str, str, datetime]] = []

    def run_status(tenant: str, pipeline: str, logical_date: datetime) -> str | None:
        asked.append((tenant, pipeline, logical_date))
        return "SUCCEEDED" if logical_date.day == 30 else None

    executor = SensorExecutor(SqlExecutor(engine), SensorProbes(run_status=run_status))
    ctx = make_ctx(tmp_path, tmp_path, params={"day": "2026-01-30"})
    own = await executor.execute(sensor(upstream={"pipeline": "orders"}), ctx)
    assert own.outputs == {
        "met": False,
        "pipeline": "orders",
        "logical_date": ctx.run.logical_date.astimezone(UTC).isoformat(),
        "status": None,
    }
    other = sensor(upstream={"pipeline": "orders", "logical_date": "{{ params.day }}"})
    assert (await executor.execute(other, ctx)).outputs["met"] is True
    assert asked == [
        (ctx.run.tenant, "orders", ctx.run.logical_date.astimezone(UTC)),
        (ctx.run.tenant, "orders", datetime(2026, 1, 30, tzinfo=UTC)),
    ]
    bad = sensor(upstream={"pipeline": "orders", "logical_date": "yesterday"})
    with pytest.raises(StepError) as info:
        await executor.execute(bad, ctx)
    assert "upstream.logical_date rendered to 'yesterday'" in str(info.value)
    assert not info.value.retryable
    without_db = SensorExecutor(SqlExecutor(engine))
    with pytest.raises(StepError) as info:
        await without_db.execute(sensor(upstream={"pipeline": "orders"}), ctx)
    assert "needs the service's database" in str(info.value)


async def test_object_check_on_the_s3_stand_in(tmp_path: Path, engine: DuckDBEngine) -> None:
    """Against moto's S3 server (the stand-in for S3: no cloud store is reachable here),
    through the storage layer the worker uses."""
    with s3_standin() as s3, _aws_credentials():
        bucket = s3.new_bucket()
        executor = SensorExecutor(SqlExecutor(engine), sensor_probes(None, s3.endpoint))
        step = sensor(file=f"s3://{bucket}/landing/orders_{{{{ ds }}}}.csv")
        ctx = make_ctx(tmp_path, tmp_path)
        first = await executor.execute(step, ctx)
        assert first.outputs == {
            "met": False,
            "file": f"s3://{bucket}/landing/orders_2026-01-31.csv",
        }
        s3.client().put_object(Bucket=bucket, Key="landing/orders_2026-01-31.csv", Body=b"x")
        assert (await executor.execute(step, ctx)).outputs["met"] is True
        # S3 answers a HEAD in a bucket that does not exist with 404 too: not there (yet).
        missing = sensor(file="s3://no-such-bucket-laminar/x.csv")
        assert (await executor.execute(missing, ctx)).outputs["met"] is False
        # A store that cannot be asked fails the check (retried per the step's retry policy).
        closed = f"http://127.0.0.1:{free_port()}"
        unreachable = SensorExecutor(SqlExecutor(engine), sensor_probes(None, closed))
        with pytest.raises(StepError) as info:
            await unreachable.execute(step, ctx)
        assert f"cannot read s3://{bucket}/landing/orders_2026-01-31.csv" in str(info.value)
        assert info.value.retryable


@contextlib.contextmanager
def _aws_credentials() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
