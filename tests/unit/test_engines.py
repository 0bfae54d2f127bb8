"""Query engines: the Trino adapter against a Trino-protocol STAND-IN (the real `trino` client
over HTTP; Trino itself cannot be installed here), and Trino-dialect SQL run on DuckDB."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.connections import Resources
from schemas.pipeline import SqlStep
from steps.base import StepError
from steps.engines.catalog import EngineCatalog
from steps.engines.duckdb import DuckDBEngine
from steps.sql import SqlExecutor
from tests.standins.trino_protocol import TrinoStandIn
from tests.unit.test_steps import make_ctx

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def standin() -> Iterator[TrinoStandIn]:
    with TrinoStandIn(password=SECRET) as server:
        yield server


def resources(port: int, password: str = SECRET) -> Resources:
    return Resources(
        connections={
            "warehouse": {
                "host": "127.0.0.1",
                "port": port,
                "user": "laminar",
                "catalog": "lake",
                "schema": "sales",
                "password": password,
                "allow_insecure_auth": True,  # the stand-in serves plain http on loopback
            }
        }
    )


def trino_step(sql: str, **fields: Any) -> SqlStep:
    return SqlStep(id="q", type="sql", sql=sql, engine="trino", connection="warehouse", **fields)


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline"
    path.mkdir()
    return path


async def test_trino_step_runs_statements_with_bound_values_and_preview(
    engine: DuckDBEngine, standin: TrinoStandIn, tmp_path: Path, source_dir: Path
) -> None:
    executor = SqlExecutor(EngineCatalog(engine, resources(standin.port)))
    evil = "O'Brien'); DROP TABLE orders; --"
    step = trino_step(
        "CREATE TABLE orders (id BIGINT, customer VARCHAR);"
        "INSERT INTO orders VALUES (1, {{ params.name }}), (2, 'b');"
        "SELECT id, customer FROM orders WHERE customer = {{ params.name }} OR id > 1 "
        "ORDER BY id",
        preview_rows=1,
    )
    ctx = make_ctx(tmp_path, source_dir, params={"name": evil})
    result = await executor.execute(step, ctx)

    assert result.rows_affected == 2
    assert result.outputs["statements"] == 3
    assert result.outputs["connection"] == "warehouse"
    assert result.outputs["preview"] == {
        "columns": ["id", "customer"],
        "rows": [[1, evil]],
        "truncated": True,
    }
    # The session comes from the named connection; parameters travelled as parameters.
    first = standin.queries[-1].headers
    assert first["x-trino-user"] == "laminar"
    assert first["x-trino-catalog"] == "lake"
    assert first["x-trino-schema"] == "sales"
    assert any(s.startswith("EXECUTE IMMEDIATE") and "USING" in s for s in standin.statements())
    assert all("DROP TABLE orders; --'" not in s.split("USING")[0] for s in standin.statements())
    rows = standin.database.execute("SELECT customer FROM orders ORDER BY id").fetchall()
    assert rows == [(evil,), ("b",)]


async def test_trino_password_reaches_only_the_auth_header(
    engine: DuckDBEngine, standin: TrinoStandIn, tmp_path: Path, source_dir: Path
) -> None:
    settings = resources(standin.port)
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    await SqlExecutor(EngineCatalog(engine, settings)).execute(
        trino_step("SELECT 1"), make_ctx(tmp_path, source_dir)
    )
    assert standin.auth_headers[-1] is not None and standin.auth_headers[-1].startswith("Basic ")


async def test_trino_wrong_password_fails_without_retry_or_leak(
    engine: DuckDBEngine, standin: TrinoStandIn, tmp_path: Path, source_dir: Path
) -> None:
    executor = SqlExecutor(EngineCatalog(engine, resources(standin.port, "wrong-pw-123")))
    with pytest.raises(StepError) as info:
        await executor.execute(trino_step("SELECT 1"), make_ctx(tmp_path, source_dir))
    assert info.value.error_type == "AuthError" and not info.value.retryable
    assert "wrong-pw-123" not in str(info.value)


async def test_trino_bad_sql_is_not_retryable(
    engine: DuckDBEngine, standin: TrinoStandIn, tmp_path: Path, source_dir: Path
) -> None:
    executor = SqlExecutor(EngineCatalog(engine, resources(standin.port)))
    with pytest.raises(StepError) as info:
        await executor.execute(trino_step("SELECT * FROM nowhere"), make_ctx(tmp_path, source_dir))
    assert info.value.error_type == "SqlError" and not info.value.retryable
    assert "warehouse" in info.value.message


async def test_unknown_connection_names_the_settings_to_set(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    executor = SqlExecutor(EngineCatalog(engine, Resources()))
    with pytest.raises(StepError) as info:
        await executor.execute(trino_step("SELECT 1"), make_ctx(tmp_path, source_dir))
    assert not info.value.retryable
    assert "LAMINAR_CONNECTIONS__WAREHOUSE__HOST" in info.value.message


async def test_cancel_kills_the_trino_query(
    engine: DuckDBEngine,
    standin: TrinoStandIn,
    tmp_path: Path,
    source_dir: Path,
    slow_query: str,
) -> None:
    executor = SqlExecutor(EngineCatalog(engine, resources(standin.port)))
    task = asyncio.ensure_future(
        executor.execute(trino_step(slow_query), make_ctx(tmp_path, source_dir))
    )
    deadline = time.monotonic() + 10
    while not any(q.state == "RUNNING" for q in standin.queries):
        assert time.monotonic() < deadline, "the query never reached the stand-in"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5
    running = [q for q in standin.queries if "range(1000000000)" in q.sql.lower()]
    assert standin.cancels, "no cancel reached the coordinator"
    assert running and running[-1].done.wait(5), "the query kept running on the coordinator"
    assert running[-1].cancelled


async def test_trino_dialect_runs_on_duckdb(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    step = SqlStep(
        id="t",
        type="sql",
        dialect="trino",
        preview_rows=5,
        sql=(
            "CREATE TABLE days AS SELECT date_add('day', 1, CAST({{ ds }} AS date)) AS next_day,"
            " approx_distinct(x) AS n FROM (VALUES (1), (2), (2)) AS v(x)"
        ),
    )
    result = await SqlExecutor(engine).execute(step, make_ctx(tmp_path, source_dir))
    assert result.rows_affected == 1
    assert result.outputs["output_table"] == "days"
    # DuckDB's date + interval is a timestamp where Trino's date_add keeps a date.
    ((next_day, distinct),) = result.outputs["preview"]["rows"]
    assert next_day.startswith("2026-02-01") and distinct == 2


async def test_untranspilable_statement_fails_without_retry(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    step = SqlStep(id="t", type="sql", dialect="trino", sql="SELECT 1; SHOW CATALOGS")
    with pytest.raises(StepError) as info:
        await SqlExecutor(engine).execute(step, make_ctx(tmp_path, source_dir))
    assert "statement 2 cannot be transpiled from trino to duckdb" in info.value.message
    assert not info.value.retryable


async def test_duckdb_preview_is_bounded(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    step = SqlStep(id="t", type="sql", sql="SELECT range AS i FROM range(100)", preview_rows=3)
    result = await SqlExecutor(engine).execute(step, make_ctx(tmp_path, source_dir))
    assert result.outputs["preview"] == {
        "columns": ["i"],
        "rows": [[0], [1], [2]],
        "truncated": True,
    }


def test_preview_is_bounded_in_bytes() -> None:
    from steps.engines.base import StatementResult

    wide = StatementResult(columns=["blob"], rows=[["x" * 1000]] * 100)
    preview = wide.preview(max_bytes=10_000)
    assert 5 <= len(preview["rows"]) < 10 and preview["truncated"]


def test_credentials_over_plain_http_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from schemas.connections import ResourceError, load_resources

    monkeypatch.setenv("LAMINAR_CONNECTIONS__WH__HOST", "h")
    monkeypatch.setenv("LAMINAR_CONNECTIONS__WH__USER", "u")
    monkeypatch.setenv("LAMINAR_CONNECTIONS__WH__PASSWORD", "hunter2-secret")
    with pytest.raises(ResourceError, match="credentials would travel in clear") as info:
        load_resources()
    assert "hunter2-secret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_access_token_is_sent_as_bearer(
    engine: DuckDBEngine, tmp_path: Path, source_dir: Path
) -> None:
    with TrinoStandIn() as standin:
        settings = Resources(
            connections={
                "warehouse": {"host": "127.0.0.1", "port": standin.port, "user": "laminar",
                              "access_token": "jwt-token-123", "allow_insecure_auth": True}
            }
        )  # fmt: skip
        await SqlExecutor(EngineCatalog(engine, settings)).execute(
            trino_step("SELECT 1"), make_ctx(tmp_path, source_dir)
        )
        assert standin.auth_headers[-1] == "Bearer jwt-token-123"


async def test_a_connection_password_can_be_the_run_tenants_secret(
    engine: DuckDBEngine, standin: TrinoStandIn, tmp_path: Path, source_dir: Path
) -> None:
    """`password: "{{ secrets.trino_pw }}"`: the value comes from the run's tenant secrets
    (resolved by the activity into the step context), never from the worker's settings."""
    import dataclasses

    from steps.registry import build_executors, connection_secret_names

    settings = resources(standin.port, password="{{ secrets.trino_pw }}")
    catalog = EngineCatalog(engine, settings)
    assert catalog.secret_names("warehouse") == {"trino_pw"}
    assert connection_secret_names(build_executors(engine, settings), trino_step("SELECT 1")) == {
        "trino_pw"
    }
    executor = SqlExecutor(catalog)
    with pytest.raises(StepError) as missing:
        await executor.execute(trino_step("SELECT 1"), make_ctx(tmp_path, source_dir))
    assert missing.value.error_type == "SecretNotFound" and not missing.value.retryable
    wrong = dataclasses.replace(make_ctx(tmp_path, source_dir), secrets={"trino_pw": "nope-123"})
    with pytest.raises(StepError) as refused:
        await executor.execute(trino_step("SELECT 1"), wrong)
    assert refused.value.error_type == "AuthError"
    right = dataclasses.replace(make_ctx(tmp_path, source_dir), secrets={"trino_pw": SECRET})
    await executor.execute(trino_step("SELECT 1"), right)
    assert standin.auth_headers[-1] is not None and standin.auth_headers[-1].startswith("Basic ")
