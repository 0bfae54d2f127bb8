"""Dead-letter replay: `{{ replay }}` in templates and validation, and which check a replay
names (the run itself: tests/service/test_quarantine_replay.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline_service.api.problems import ProblemError
from pipeline_service.api.routers.quarantine import replay_source
from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.run import ReplaySource, RunContext
from schemas.sql_templates import render_sql

GUARDED = (
    "SELECT 1 AS x {% if replay %} FROM {{ replay.schema | ident }}.{{ replay.table | ident }}"
    " WHERE _laminar_run_id = {{ replay.run_id }} {% endif %}"
)


def test_validation_renders_with_no_replay() -> None:
    ok = {"id": "a", "type": "sql", "sql": GUARDED}
    validate_pipeline({"name": "p", "steps": [ok]}, source_dir=Path("."))
    bare = {"id": "a", "type": "sql", "sql": "SELECT * FROM {{ replay.table | ident }}"}
    with pytest.raises(PipelineValidationError, match=r"steps\[0\]\.sql: ident"):
        validate_pipeline({"name": "p", "steps": [bare]}, source_dir=Path("."))


def test_a_replay_run_reads_the_quarantine_table_with_the_run_id_bound() -> None:
    source = ReplaySource(
        run_id="t/p/1'; DROP TABLE x; --", step="s", check="c", schema="quarantine", table="s__c"
    )
    context = RunContext(
        pipeline="p", run_id="r2", logical_date=datetime(2026, 1, 1, tzinfo=UTC),
        data_interval_start=datetime(2026, 1, 1, tzinfo=UTC),
        data_interval_end=datetime(2026, 1, 1, tzinfo=UTC), replay=source,
    )  # fmt: skip
    sql, binds = render_sql(GUARDED, context)
    assert 'FROM "quarantine"."s__c"' in sql
    assert list(binds.values()) == ["t/p/1'; DROP TABLE x; --"] and "DROP" not in sql


def test_which_check_a_replay_names() -> None:
    definition = validate_pipeline(
        {
            "name": "p",
            "steps": [
                {"id": "t", "type": "sql", "sql": "CREATE TABLE t AS SELECT 1 AS id"},
                {"id": "q1", "type": "quality", "table": "t", "depends_on": ["t"],
                 "checks": [{"type": "not_null", "column": "id"}, {"type": "row_count", "min": 1}]},
                {"id": "q2", "type": "quality", "table": "t", "depends_on": ["t"],
                 "checks": [{"type": "not_null", "column": "id"}]},
            ],
        },
        source_dir=Path("."),
    )  # fmt: skip
    found = replay_source(definition, "t/p/1", "not_null_id", "q2")
    assert (found.step, found.schema_name, found.table) == ("q2", "quarantine", "q2__not_null_id")
    for check, step, status in [
        ("not_null_id", None, 409),  # in q1 and q2
        ("row_count", "q1", 422),  # no rows to replay
        ("nope", None, 404),
        ("not_null_id", "t", 404),
    ]:
        with pytest.raises(ProblemError) as refused:
            replay_source(definition, "t/p/1", check, step)
        assert refused.value.status == status
