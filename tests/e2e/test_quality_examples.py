"""The orders examples end to end: quarantine on warnings, a referential error that fails the
run, a signed notification received, the check history, and the Trino-dialect form on DuckDB
giving the same reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb

from tests.e2e.conftest import EXAMPLES, Cli
from tests.receivers import EXAMPLE_SECRET, Receiver, example_channels, verify


def warehouse(state: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_orders_quality_quarantines_notifies_and_keeps_history(cli: Cli, tmp_path: Path) -> None:
    receiver = Receiver()
    states = {}
    try:
        for name in ("orders_quality", "orders_quality_trino"):
            state = states[name] = tmp_path / name
            result = cli.run(
                "run", "--once", EXAMPLES / f"{name}.yaml", "--no-ui", "--state-dir", state,
                env=cli.env(example_channels(receiver.url)),
            )  # fmt: skip
            assert result.code == 0, result.details
    finally:
        receiver.close()

    state = states["orders_quality"]
    quarantined = warehouse(
        state,
        "SELECT order_id, _laminar_check, _laminar_reason "
        'FROM quarantine."check_orders__accepted_values_status"',
    )
    assert quarantined == [(5013, "accepted_values_status", "status is not an accepted value")]
    negative = warehouse(state, 'SELECT order_id FROM quarantine."check_orders__no_negative_sales"')
    assert negative == [(5016,)]
    duplicates = warehouse(state, 'SELECT order_id FROM quarantine."check_orders__unique_order_id"')
    assert duplicates == [(5015,), (5015,)]
    # Planted rows stay out of the reports; both dialect forms agree.
    report = "SELECT region, orders, revenue FROM revenue_by_region ORDER BY region"
    assert warehouse(state, report) == warehouse(states["orders_quality_trino"], report)
    assert sum(int(row[1]) for row in warehouse(state, report)) == 17  # type: ignore[call-overload]

    # One signed notification per run, with the step's idempotency key.
    assert len(receiver.requests) == 2
    for headers, body in receiver.requests:
        assert verify(headers, body, EXAMPLE_SECRET)
        assert headers["idempotency-key"].endswith("/notify")  # not notify_failure: skipped
        assert json.loads(body)["title"].startswith("Orders report ")

    history = cli.run(
        "quality", "history", "--state-dir", state, "--check", "accepted_values_status"
    )
    assert history.code == 0, history.details
    assert "warned" in history.stdout and "check_orders" in history.stdout


def test_orphan_order_fails_the_referential_error_check(cli: Cli, tmp_path: Path) -> None:
    pipeline_dir = tmp_path / "examples"
    shutil.copytree(EXAMPLES, pipeline_dir)
    with (pipeline_dir / "data" / "orders.csv").open("a") as orders:
        orders.write("5099,99,paid,10.00,2026-01-08 20:00:00\n")  # customer 99 does not exist
    receiver = Receiver()
    try:
        result = cli.run(
            "run", "--once", pipeline_dir / "orders_quality.yaml", "--no-ui",
            "--state-dir", tmp_path / "state", env=cli.env(example_channels(receiver.url)),
        )  # fmt: skip
    finally:
        receiver.close()
    assert result.code == 1, result.details
    assert "referential_customer_id: 1 row(s)" in result.output
    assert "Traceback" not in result.output
    # Not retried: the same data would fail the same way.
    assert result.output.count("check_clean: RETRYING") == 0
    orphans = warehouse(
        tmp_path / "state", 'SELECT order_id FROM quarantine."check_clean__referential_customer_id"'
    )
    assert orphans == [(5099,)]
    # The reports and their notification did not run; the failure alert (one_failed) did.
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    assert verify(headers, body, EXAMPLE_SECRET)
    assert headers["idempotency-key"].endswith("/notify_failure")
    assert json.loads(body)["title"].startswith("Orders run failed ")


def test_trino_steps_through_laminar_run(cli: Cli, tmp_path: Path) -> None:
    """`laminar run` with steps on a Trino connection from the environment, served by the
    Trino-protocol STAND-IN (not Trino): the worker's settings reach the adapter, the
    password reaches only the Authorization header, never the output or the log."""
    from tests.standins.trino_protocol import TrinoStandIn

    pipeline = tmp_path / "lake.yaml"
    pipeline.write_text(
        """
name: lake
steps:
  - id: build
    type: sql
    engine: trino
    connection: lake
    preview_rows: 2
    sql: |
      CREATE TABLE sales AS
      SELECT * FROM (VALUES (1, 'EU', 10.0), (2, 'US', -1.0)) AS t(id, region, amount);
      SELECT region, amount FROM sales WHERE region = {{ params.region }}
  - id: dq
    type: quality
    depends_on: [build]
    engine: trino
    connection: lake
    table: sales
    checks:
      - {type: range, column: amount, min: 0, severity: warn}
params:
  region: EU
"""
    )
    password = "lake-pass-31337"
    with TrinoStandIn(password=password) as standin:
        env = {
            "LAMINAR_CONNECTIONS__LAKE__HOST": "127.0.0.1",
            "LAMINAR_CONNECTIONS__LAKE__PORT": str(standin.port),
            "LAMINAR_CONNECTIONS__LAKE__USER": "laminar",
            "LAMINAR_CONNECTIONS__LAKE__CATALOG": "memory",
            "LAMINAR_CONNECTIONS__LAKE__PASSWORD": password,
            "LAMINAR_CONNECTIONS__LAKE__ALLOW_INSECURE_AUTH": "true",
        }
        result = cli.run(
            "run", "--once", pipeline, "--no-ui", "--state-dir", tmp_path / "state",
            env=cli.env(env),
        )  # fmt: skip
        quarantined = standin.database.execute(
            'SELECT id, _laminar_check FROM quarantine."dq__range_amount"'
        ).fetchall()
    assert result.code == 0, result.details
    assert "'rows': [['EU', 10.0]]" in result.stdout
    assert quarantined == [(2, "range_amount")]
    assert {q.headers["x-trino-catalog"] for q in standin.queries} == {"memory"}
    log = (tmp_path / "state" / "logs" / "laminar.log").read_text()
    assert password not in result.output and password not in log
