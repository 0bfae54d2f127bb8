"""Templates in SQL land only where a value may go: inside quoted strings they become string
concatenations with binds (never the placeholder's own text); names go through `ident`."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.run import RunContext
from schemas.sql_templates import render_sql
from schemas.templating import TemplateProblem

INJECTION = "x'; DROP TABLE t; --"


def context(**params: Any) -> RunContext:
    moment = datetime(2024, 1, 31, tzinfo=UTC)
    return RunContext(
        pipeline="p",
        run_id="default/p/2024-01-31",
        logical_date=moment,
        data_interval_start=moment,
        data_interval_end=datetime(2024, 2, 1, tzinfo=UTC),
        params=params,
    )


def run(sql: str, **params: Any) -> list[tuple[Any, ...]]:
    text, binds = render_sql(sql, context(**params))
    with duckdb.connect(":memory:") as connection:
        connection.execute("CREATE TABLE t AS SELECT 1 AS a")
        result: list[tuple[Any, ...]] = []
        for statement in connection.extract_statements(text):
            names = statement.named_parameters
            connection.execute(statement, {n: binds[n] for n in names})
            if connection.description:
                result = connection.fetchall()
        return result


def test_template_inside_a_string_renders_its_value_not_a_placeholder() -> None:
    assert run("SELECT '{{ ds }}' AS d") == [("2024-01-31",)]
    assert run("SELECT 'day {{ ds }}, region {{ params.r }}!' AS d", r="EU") == [
        ("day 2024-01-31, region EU!",)
    ]
    assert run("SELECT 'it''s {{ params.r }}' AS d", r="EU") == [("it's EU",)]


def test_string_values_stay_inert_inside_quoted_strings() -> None:
    assert run("SELECT 'v={{ params.r }}' AS d", r=INJECTION) == [(f"v={INJECTION}",)]
    text, _ = render_sql("SELECT 'v={{ params.r }}'", context(r=INJECTION))
    assert "DROP" not in text


def test_typed_literal_with_template_is_cast() -> None:
    assert run("SELECT DATE '{{ ds }}' AS d") == [(date(2024, 1, 31),)]
    assert run("SELECT '{{ ds }}'::DATE + 1 AS d") == [(date(2024, 2, 1),)]
    assert run("SELECT INTERVAL '{{ params.n }} days' AS d", n=3) == [(timedelta(days=3),)]


def test_file_path_with_template_reads_the_rendered_file(tmp_path: Path) -> None:
    (tmp_path / "in_5.csv").write_text("a,b\n1,2\n")
    sql = f"SELECT * FROM read_csv_auto('{tmp_path}/in_{{{{ params.day }}}}.csv')"
    assert run(sql, day=5) == [(1, 2)]


def test_placeholder_text_written_by_the_user_is_not_a_placeholder() -> None:
    assert run("SELECT '$lam_0' AS a, {{ params.r }} AS b", r="EU") == [("$lam_0", "EU")]


def test_ident_filter_quotes_a_name() -> None:
    text, binds = render_sql("CREATE TABLE {{ params.x | ident }} AS SELECT 1", context(x='a"b'))
    assert text == 'CREATE TABLE "a""b" AS SELECT 1'
    assert binds == {}
    assert run(
        'CREATE TABLE {{ params.x | ident }} AS SELECT 1; SELECT * FROM "städte"', x="städte"
    ) == [(1,)]


@pytest.mark.parametrize("bad", ["", "a\x00b", 5])
def test_ident_filter_refuses_what_is_not_a_name(bad: Any) -> None:
    with pytest.raises(TemplateProblem, match="ident"):
        render_sql("SELECT 1 FROM {{ params.x | ident }}", context(x=bad))


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE {{ params.x }}_tbl AS SELECT 1",
        "CREATE TABLE tbl_{{ params.x }} AS SELECT 1",
        'CREATE TABLE "{{ params.x }}" AS SELECT 1',
        "CREATE TABLE s.{{ params.x }} AS SELECT 1",
    ],
)
def test_template_inside_a_name_is_refused_with_a_pointer_to_ident(sql: str) -> None:
    with pytest.raises(TemplateProblem, match=r"\| ident"):
        render_sql(sql, context(x="day"))


def test_integers_beyond_64_bits_are_refused() -> None:
    with pytest.raises(TemplateProblem, match="64-bit"):
        render_sql("SELECT {{ params.n }}", context(n=2**70))


def check(sql: str, params: dict[str, Any] | None = None) -> list[str]:
    data = {"name": "p", "params": params or {}, "steps": [{"id": "s", "type": "sql", "sql": sql}]}
    try:
        validate_pipeline(data, source_dir=Path("."))
    except PipelineValidationError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_validate_refuses_names_built_by_templates_and_points_to_ident() -> None:
    problems = check("CREATE TABLE {{ params.x }}_tbl AS SELECT 1", {"x": "a"})
    assert len(problems) == 1 and problems[0].startswith("steps[0].sql:"), problems
    assert "{{ ... | ident }}" in problems[0]
    problems = check("CREATE TABLE {{ params.x }} AS SELECT 1", {"x": "a"})
    assert len(problems) == 1 and "| ident" in problems[0], problems
    assert check("CREATE TABLE {{ params.x | ident }}_x AS SELECT 1", {"x": "a"}) != []
    assert check("CREATE TABLE {{ (params.x ~ '_tbl') | ident }} AS SELECT 1", {"x": "a"}) == []


def test_validate_accepts_templates_in_strings() -> None:
    assert (
        check("SELECT '{{ ds }}' AS d, * FROM read_csv_auto('in_{{ params.day }}.csv')", {"day": 1})
        == []
    )


def test_validate_refuses_binds_where_duckdb_takes_none() -> None:
    problems = check("CREATE VIEW v AS SELECT {{ ds }} AS d")
    assert len(problems) == 1 and "CREATE VIEW" in problems[0], problems
    problems = check("CREATE TABLE t (d VARCHAR DEFAULT '{{ ds }}')")
    assert len(problems) == 1 and "DEFAULT" in problems[0], problems


def test_validate_renders_every_template_in_the_sandbox(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("print(1)\n")
    data = {
        "name": "p",
        "steps": [
            {
                "id": "p",
                "type": "python",
                "script": "s.py",
                "args": ["{{ ''.__class__ }}"],
                "env": {"X": "{{ ds.__class__ }}"},
            },
        ],
    }
    with pytest.raises(PipelineValidationError) as info:
        validate_pipeline(data, source_dir=tmp_path)
    paths = [p.path for p in info.value.problems]
    assert paths == ["steps[0].args[0]", "steps[0].env.X"], info.value.problems
    assert "unsafe" in str(info.value)


def test_validate_refuses_integer_params_beyond_64_bits() -> None:
    problems = check("SELECT {{ params.n }}", {"n": 2**64})
    assert problems == [
        "params.n.default: integer out of range (DuckDB takes 64-bit integers: "
        "-9223372036854775808 to 9223372036854775807)"
    ], problems
