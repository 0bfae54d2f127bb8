"""Validation of SQL steps on other engines and dialects: transpiling problems by statement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.dialects import bind_positional, transpile_script
from schemas.loading import validate_pipeline
from tests.unit.test_loading import problems_in, steps_doc


def sql(**fields: Any) -> dict[str, Any]:
    return {"id": "s", "type": "sql", **fields}


def test_trino_dialect_on_duckdb_validates(tmp_path: Path) -> None:
    doc = steps_doc(
        sql(dialect="trino", sql="SELECT date_add('day', 1, current_date), {{ ds }} AS d")
    )
    assert validate_pipeline(doc, source_dir=tmp_path).steps[0].source_dialect == "trino"


def test_statement_that_cannot_be_transpiled_is_named(tmp_path: Path) -> None:
    doc = steps_doc(sql(dialect="trino", sql="SELECT 1; SHOW CATALOGS"))
    assert problems_in(doc, tmp_path) == [
        "steps[0].sql: statement 2 cannot be transpiled from trino to duckdb: "
        "sqlglot does not understand 'SHOW' statements"
    ]


def test_translation_duckdb_cannot_run_is_reported(tmp_path: Path) -> None:
    doc = steps_doc(
        sql(
            dialect="trino",
            sql="SELECT * FROM t MATCH_RECOGNIZE (PARTITION BY a ORDER BY b "
            "MEASURES FIRST(b) AS fb PATTERN (A B+) DEFINE B AS b > PREV(b))",
        )
    )
    (problem,) = problems_in(doc, tmp_path)
    assert problem.startswith("steps[0].sql: statement 1 cannot be transpiled from trino to duckdb")


def test_engine_and_connection_must_agree(tmp_path: Path) -> None:
    doc = steps_doc(
        sql(engine="trino", sql="SELECT 1"),
        {**sql(connection="wh", sql="SELECT 1"), "id": "t"},
    )
    problems = problems_in(doc, tmp_path)
    assert any("engine 'trino' needs a connection" in p for p in problems)
    assert any("takes no connection" in p for p in problems)


def test_trino_engine_sql_must_parse_as_trino(tmp_path: Path) -> None:
    doc = steps_doc(sql(engine="trino", connection="wh", sql="SELECT FROM WHERE ("))
    (problem,) = problems_in(doc, tmp_path)
    assert "does not parse as trino" in problem


def test_placeholders_in_string_literals_are_not_bound() -> None:
    (statement,) = transpile_script("SELECT ':lam_0', :lam_0, :lam_1", "trino", "trino")
    bound = bind_positional(statement, {"lam_0": "a", "lam_1": 2}, "trino")
    assert bound.sql == "SELECT ':lam_0', ?, ?"
    assert bound.params == ["a", 2]


def test_statements_sqlglot_keeps_raw_pass_through_in_their_own_dialect() -> None:
    script = "CALL system.sync_partition_metadata('s', 't', 'ADD'); SELECT 1"
    assert transpile_script(script, "trino", "trino") == [
        "CALL system.sync_partition_metadata('s', 't', 'ADD')",
        "SELECT 1",
    ]
