"""Data handoff between steps: `outputs:` of python steps loaded atomically into the warehouse,
`{{ steps.<id>.result.<key> }}` / `{{ steps.<id>.outputs.<name> }}` validated against the DAG."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.run import UpstreamResult
from schemas.templating import step_references
from steps.base import StepError
from steps.engines.duckdb import DuckDBEngine
from steps.python_script import PythonScriptExecutor
from steps.sql import SqlExecutor
from tests.unit.test_steps import make_ctx, python_step, source_dir, sql_step, write_script

__all__ = ["source_dir"]  # the fixture

WRITER = (
    "import json, os\n"
    "open('cities.csv', 'w').write('name,people\\nWien,2\\nGraz,1\\n')\n"
    "import duckdb\n"
    "duckdb.sql(\"COPY (SELECT 7 AS n) TO 'n.parquet' (FORMAT parquet)\")\n"
    "json.dump({'count': 2}, open(os.environ['LAMINAR_RESULT'], 'w'))\n"
)


async def test_outputs_are_loaded_into_the_warehouse(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    script = write_script(source_dir, "writer.py", WRITER)
    step = python_step(script, outputs={"städte": "cities.csv", "mart.n": "n.parquet"})
    engine.cursor().execute("CREATE SCHEMA mart")
    result = await PythonScriptExecutor(engine).execute(step, make_ctx(tmp_path, source_dir))
    assert result.tables == {"städte": "städte", "mart.n": "mart.n"}
    assert result.outputs == {"count": 2}
    cursor = engine.cursor()
    assert cursor.execute('SELECT * FROM "städte" ORDER BY people').fetchall() == [
        ("Graz", 1),
        ("Wien", 2),
    ]
    assert cursor.execute("SELECT n FROM mart.n").fetchall() == [(7,)]


async def test_a_failed_load_fails_the_step_and_leaves_no_table(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    script = write_script(source_dir, "writer.py", WRITER)
    step = python_step(script, outputs={"cities": "cities.csv", "broken": "missing.parquet"})
    with pytest.raises(StepError) as info:
        await PythonScriptExecutor(engine).execute(step, make_ctx(tmp_path, source_dir))
    assert info.value.error_type == "OutputError"
    assert "missing.parquet" in info.value.message
    tables = engine.cursor().execute("SELECT table_name FROM duckdb_tables()").fetchall()
    assert tables == []  # cities was not left behind either


async def test_sql_templates_see_upstream_results_and_outputs(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    engine.cursor().execute("CREATE TABLE \"städte\" AS SELECT 'Wien' AS name")
    ctx = make_ctx(tmp_path, source_dir, "use")
    found = UpstreamResult(result={"count": 2, "label": "x'y"}, tables={"städte": "städte"})
    ctx = dataclasses.replace(ctx, upstream={"load": found})
    step = sql_step(
        "CREATE TABLE used AS SELECT name, {{ steps.load.result.count }} AS n, "
        "'{{ steps.load.result.label }}' AS label FROM {{ steps.load.outputs['städte'] }}",
        "use",
    )
    await SqlExecutor(engine).execute(step, ctx)
    assert engine.cursor().execute("SELECT * FROM used").fetchall() == [("Wien", 2, "x'y")]


def test_step_references() -> None:
    refs = step_references("{{ steps.a.result.x }} {{ steps['b'].outputs.t }} {{ steps.c }}")
    assert refs == [("a", "result", "x"), ("b", "outputs", "t"), ("c", None, None)]


def problems(steps: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    (tmp_path / "s.py").write_text("pass\n")
    try:
        validate_pipeline({"name": "p", "steps": steps}, source_dir=tmp_path)
    except PipelineValidationError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_references_are_validated_against_the_dag(tmp_path: Path) -> None:
    load = {"id": "load", "type": "python", "script": "s.py", "outputs": {"t": "t.csv"}}
    ok = {
        "id": "use",
        "type": "sql",
        "depends_on": ["mid"],
        "sql": "SELECT {{ steps.load.result.n }} FROM {{ steps.load.outputs.t }}",
    }
    mid = {"id": "mid", "type": "noop", "depends_on": ["load"]}
    assert problems([load, mid, ok], tmp_path) == []
    side = {"id": "side", "type": "noop"}
    bad = [
        load,
        side,
        {
            "id": "use",
            "type": "sql",
            "depends_on": ["side"],
            "sql": "SELECT {{ steps.load.result.n }}, {{ steps.nope.result.n }}, "
            "{{ steps.side.outputs.t }}, {{ steps.side.rows }}",
        },
    ]
    assert problems(bad, tmp_path) == [
        "steps[2].sql: step 'load' is not upstream of 'use' (add it to depends_on)",
        "steps[2].sql: unknown step 'nope' in template",
        "steps[2].sql: step 'side' declares no output 't' (outputs: none)",
        "steps[2].sql: use steps.side.result.<key> or steps.side.outputs.<name>",
    ]


def test_two_steps_cannot_output_the_same_table(tmp_path: Path) -> None:
    a = {"id": "a", "type": "python", "script": "s.py", "outputs": {"Cities": "c.csv"}}
    b = {"id": "b", "type": "python", "script": "s.py", "outputs": {"cities": "c.csv"}}
    assert problems([a, b], tmp_path) == [
        "steps[1].outputs.cities: table 'cities' is already an output of steps[0]"
    ]


def test_outputs_and_inputs_accept_any_engine_identifier(tmp_path: Path) -> None:
    step = {
        "id": "p",
        "type": "python",
        "script": "s.py",
        "inputs": ["städte", "mart.Odd Name"],
        "outputs": {"größe": "g.parquet"},
    }
    assert problems([step], tmp_path) == []
    step = {
        **step,
        "inputs": ["a\x00b", ""],
        "outputs": {"x": "../x.csv", "y": "y.txt", "z": "/z.csv"},
    }
    assert problems([step], tmp_path) == [
        "steps[0].inputs[0]: 'a\\x00b' is not a table name (name or schema.name, no NUL)",
        "steps[0].inputs[1]: '' is not a table name (name or schema.name, no NUL)",
        "steps[0].outputs.x: '../x.csv' must be a file in the step's output directory",
        "steps[0].outputs.y: 'y.txt' must end in .parquet or .csv",
        "steps[0].outputs.z: '/z.csv' must be a file in the step's output directory",
    ]
