"""Quality steps on DuckDB (and through the Trino-protocol stand-in): every check type,
severities, quarantine tables, results history, and names/values that stay inert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.connections import Resources
from schemas.pipeline import QualityStep
from steps.base import StepError
from steps.engines.catalog import EngineCatalog
from steps.engines.duckdb import DuckDBEngine
from steps.quality import QualityExecutor
from tests.standins.trino_protocol import TrinoStandIn
from tests.unit.test_steps import make_ctx

ORDERS = """
CREATE TABLE customers (id INTEGER, name VARCHAR);
INSERT INTO customers VALUES (1, 'ada'), (2, 'bob');
CREATE TABLE orders (id INTEGER, customer_id INTEGER, status VARCHAR, amount DOUBLE,
                     placed_at TIMESTAMP);
INSERT INTO orders VALUES
  (1, 1, 'paid',    10.0, '2026-01-30 10:00:00'),
  (2, 2, 'paid',    20.0, '2026-01-30 11:00:00'),
  (3, 9, 'paid',    30.0, '2026-01-30 12:00:00'),   -- unknown customer
  (3, 1, 'lost',    -5.0, '2026-01-30 13:00:00'),   -- duplicate id, bad status, negative
  (5, NULL, 'open', 50.0, '2026-01-30 14:00:00');   -- no customer
"""


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline"
    path.mkdir()
    return path


@pytest.fixture
def loaded(engine: DuckDBEngine) -> DuckDBEngine:
    engine.cursor().execute(ORDERS)
    return engine


def quality(checks: list[dict[str, Any]], **fields: Any) -> QualityStep:
    return QualityStep.model_validate(
        {"id": "dq", "type": "quality", "table": "orders", "checks": checks, **fields}
    )


ALL_WARN = [
    {"type": "row_count", "min": 1, "max": 100},
    {"type": "not_null", "column": "customer_id", "severity": "warn"},
    {"type": "unique", "column": "id", "severity": "warn"},
    {"type": "unique", "columns": ["id", "customer_id"]},
    {"type": "accepted_values", "column": "status", "values": ["paid", "open"], "severity": "warn"},
    {"type": "range", "column": "amount", "min": 0, "severity": "warn"},
    {"type": "freshness", "column": "placed_at", "max_age": "1d"},
    {"type": "referential", "column": "customer_id", "to_table": "customers",
     "to_column": "id", "severity": "warn"},
    {"type": "expression", "expression": "amount < 1000 AND status <> 'void'"},
    {"type": "custom_sql", "name": "big_paid", "severity": "warn",
     "sql": "SELECT * FROM orders WHERE status = 'paid' AND amount >= 30"},
    {"type": "schema", "columns": {"id": "INT", "amount": "DOUBLE", "status": "TEXT"}},
]  # fmt: skip


async def test_every_check_type_reports_observed_threshold_and_quarantines(
    loaded: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    result = await QualityExecutor(EngineCatalog(loaded)).execute(
        quality(ALL_WARN, sample_rows=2), make_ctx(tmp_path, source_dir)
    )
    by_name = {o["check"]: o for o in result.outputs["checks"]}
    status = {name: o["status"] for name, o in by_name.items()}
    assert status == {
        "row_count": "passed",
        "not_null_customer_id": "warned",
        "unique_id": "warned",
        "unique_id_customer_id": "passed",
        "accepted_values_status": "warned",
        "range_amount": "warned",
        "freshness_placed_at": "passed",
        "referential_customer_id": "warned",
        "expression": "passed",
        "big_paid": "warned",
        "schema": "passed",
    }
    assert by_name["row_count"]["observed"] == 5
    assert by_name["row_count"]["threshold"] == {"min": 1, "max": 100}
    assert by_name["unique_id"]["failing_rows"] == 2
    assert by_name["referential_customer_id"]["failing_rows"] == 1  # NULL is not_null's job
    assert by_name["range_amount"]["threshold"] == {"min": 0, "max": None}
    assert by_name["freshness_placed_at"]["observed"]["age_seconds"] == 10 * 3600
    assert by_name["big_paid"]["failing_rows"] == 1
    assert result.outputs["warnings"] == 6 and result.outputs["errors"] == 0
    sample = by_name["unique_id"]["sample"]
    assert sample["columns"][:2] == ["id", "customer_id"] and len(sample["rows"]) == 2
    assert not sample["truncated"]
    cur = loaded.cursor()
    quarantined = cur.execute(
        "SELECT id, _laminar_run_id, _laminar_check, _laminar_reason "
        'FROM quarantine."dq__range_amount"'
    ).fetchall()
    assert quarantined == [(3, "default/test/2026-01-31", "range_amount", "amount outside [0, ]")]
    assert result.rows_affected == 7  # rows quarantined over all checks (1+2+1+1+1+1)


async def test_error_check_fails_without_retry_and_keeps_quarantine_and_history(
    loaded: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    step = quality(
        [
            {"type": "referential", "column": "customer_id", "to_table": "customers",
             "to_column": "id"},
            {"type": "row_count", "min": 10, "severity": "warn"},
        ]
    )  # fmt: skip
    executor = QualityExecutor(EngineCatalog(loaded))
    for attempt in (1, 2):  # a second attempt replaces the first one's rows
        with pytest.raises(StepError) as info:
            await executor.execute(step, make_ctx(tmp_path, source_dir, attempt=attempt))
        assert info.value.error_type == "QualityCheckFailed" and not info.value.retryable
        assert "referential_customer_id: 1 row(s)" in info.value.message
    cur = loaded.cursor()
    assert cur.execute(
        'SELECT count(*) FROM quarantine."dq__referential_customer_id"'
    ).fetchone() == (1,)
    history = cur.execute(
        "SELECT check_name, status, failing_rows, observed FROM quarantine.check_results ORDER BY 1"
    ).fetchall()
    assert history == [
        ("referential_customer_id", "failed", 1, "1"),
        ("row_count", "warned", None, "5"),
    ]


async def test_names_and_values_are_inert(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    evil = 'x"; DROP TABLE victims; --'
    engine.cursor().execute(
        "CREATE TABLE victims (a INT);"
        f'CREATE TABLE "odd" ("{evil.replace(chr(34), 2 * chr(34))}" VARCHAR);'
        """INSERT INTO "odd" VALUES ('ok'), ('x''); DROP TABLE victims; --')"""
    )
    step = quality(
        [{"type": "accepted_values", "column": evil, "values": ["ok"], "severity": "warn"}],
        table="odd",
    )
    result = await QualityExecutor(EngineCatalog(engine)).execute(
        step, make_ctx(tmp_path, source_dir)
    )
    (outcome,) = result.outputs["checks"]
    assert outcome["failing_rows"] == 1
    assert engine.cursor().execute("SELECT count(*) FROM victims").fetchone() == (0,)


async def test_query_source_with_template_values(
    loaded: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    step = QualityStep.model_validate(
        {
            "id": "dq",
            "type": "quality",
            "query": "SELECT * FROM orders WHERE status = {{ params.status }}",
            "checks": [{"type": "row_count", "min": 3, "max": 3}],
        }
    )
    ctx = make_ctx(tmp_path, source_dir, params={"status": "paid"})
    result = await QualityExecutor(EngineCatalog(loaded)).execute(step, ctx)
    assert result.outputs["checks"][0]["observed"] == 3


async def test_schema_check_reports_each_problem(
    loaded: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    step = quality(
        [{"type": "schema", "columns": {"id": "VARCHAR", "nope": "INT"}, "allow_extra": False}]
    )
    with pytest.raises(StepError) as info:
        await QualityExecutor(EngineCatalog(loaded)).execute(step, make_ctx(tmp_path, source_dir))
    assert "id: expected VARCHAR, found INTEGER" in info.value.message
    assert "missing column nope" in info.value.message
    assert "unexpected column placed_at" in info.value.message


def test_definition_errors_are_caught_by_the_model() -> None:
    with pytest.raises(ValueError, match="exactly one of table or query"):
        quality([{"type": "not_null", "column": "a"}], query="SELECT 1")
    with pytest.raises(ValueError, match="two checks are named 'not_null_a'"):
        quality([{"type": "not_null", "column": "a"}, {"type": "not_null", "column": "a"}])
    with pytest.raises(ValueError, match="row_count needs min, max or both"):
        quality([{"type": "row_count"}])


async def test_quality_on_trino_stand_in(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    """Against the Trino-protocol STAND-IN: the same checks compile to Trino SQL with `?`
    parameters (sent by the client as EXECUTE IMMEDIATE ... USING)."""
    with TrinoStandIn() as standin:
        standin.database.execute(ORDERS)
        catalog = EngineCatalog(
            engine,
            Resources(connections={"wh": {"host": "127.0.0.1", "port": standin.port,
                                          "user": "laminar"}}),
        )  # fmt: skip
        step = quality(
            [
                {"type": "accepted_values", "column": "status", "values": ["paid", "open"],
                 "severity": "warn"},
                {"type": "row_count", "min": 1},
            ],
            engine="trino",
            connection="wh",
        )  # fmt: skip
        result = await QualityExecutor(catalog).execute(step, make_ctx(tmp_path, source_dir))
        rows = standin.database.execute(
            'SELECT id, _laminar_check FROM quarantine."dq__accepted_values_status"'
        ).fetchall()
        assert any(s.startswith("EXECUTE IMMEDIATE") for s in standin.statements())
    assert result.outputs["checks"][0]["failing_rows"] == 1
    assert rows == [(3, "accepted_values_status")]


async def test_history_command_shows_a_check_across_runs(tmp_path: Path, source_dir: Path) -> None:
    from typer.testing import CliRunner

    from pipeline_service.commands import app

    warehouse = DuckDBEngine(tmp_path / "state" / "warehouse.duckdb")
    try:
        warehouse.cursor().execute(ORDERS)
        step = quality([{"type": "range", "column": "amount", "min": 0, "severity": "warn"}])
        for day in ("2026-01-30", "2026-01-31"):
            ctx = make_ctx(tmp_path, source_dir, pipeline=f"orders-{day}")
            await QualityExecutor(EngineCatalog(warehouse)).execute(step, ctx)
    finally:
        warehouse.close()
    args = ["quality", "history", "--state-dir", str(tmp_path / "state"), "--check", "range_amount"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.output.count("range_amount") == 2 and "warned" in result.output
    missing = CliRunner().invoke(app, ["quality", "history", "--state-dir", str(tmp_path)])
    assert missing.exit_code == 2
    neither = CliRunner().invoke(app, ["quality", "history"])
    assert neither.exit_code == 2 and "give a pipeline file or --state-dir" in neither.output


async def test_cancel_interrupts_the_checks(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path, slow_query: str
) -> None:
    import asyncio
    import time

    step = QualityStep.model_validate(
        {
            "id": "dq",
            "type": "quality",
            "query": slow_query,
            "checks": [{"type": "row_count", "min": 1}],
        }
    )
    task = asyncio.ensure_future(
        QualityExecutor(EngineCatalog(engine)).execute(step, make_ctx(tmp_path, source_dir))
    )
    await asyncio.sleep(0.5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5
    # The engine is free again: the interrupted query did not keep the connection busy.
    assert engine.cursor().execute("SELECT 42").fetchone() == (42,)


async def test_freshness_is_judged_at_the_logical_date(
    loaded: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    # The newest order is 2026-01-30 14:00; make_ctx's logical date is 2026-01-31 00:00.
    stale = quality([{"type": "freshness", "column": "placed_at", "max_age": "9h59m"}])
    with pytest.raises(StepError) as info:
        await QualityExecutor(EngineCatalog(loaded)).execute(stale, make_ctx(tmp_path, source_dir))
    assert "freshness_placed_at: observed {'newest': '2026-01-30T14:00:00'" in info.value.message
    assert not info.value.retryable
    fresh = quality([{"type": "freshness", "column": "placed_at", "max_age": "10h"}])
    result = await QualityExecutor(EngineCatalog(loaded)).execute(
        fresh, make_ctx(tmp_path, source_dir)
    )
    assert result.outputs["checks"][0]["threshold"] == {"max_age_seconds": 36000.0}
