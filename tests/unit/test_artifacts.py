"""The artifact store (LAMINAR_ARTIFACT_URL) in the `run_step` activity: two workers, each
with its own DuckDB warehouse and work directory, sharing one store (a real local-filesystem
object store through obstore; the S3 path is exercised end to end in tests/e2e). Hand-off
tables cross workers through it; attempt logs are uploaded masked; the API's reader finds
them there."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.artifacts import log_key, run_prefix, table_key
from activities.steps import StepActivities
from pipeline_service.api.step_logs import StepLogs
from pipeline_service.db.models import StepRun
from pipeline_service.storage.artifacts import ArtifactStorage
from schemas.pipeline import PythonStep, SecretRef, SqlStep, Step
from schemas.run import RunContext, RunStepInput, UpstreamResult
from steps.engines.duckdb import DuckDBEngine
from steps.registry import build_executors

TENANT = "acme"
PLANTED = "s3cr3t-planted-value"

PRODUCE = """\
import sys
from pathlib import Path
amount = int(sys.argv[1])
Path("sales.csv").write_text("region,amount\\nEU,%d\\nUS,5\\n" % amount)
print("wrote sales", amount)
"""
CONSUME = """\
import duckdb, json, os
context = json.load(open(os.environ["LAMINAR_CONTEXT"]))
total = duckdb.connect().execute(
    "SELECT sum(amount) FROM read_parquet(?)", [context["inputs"]["sales"]]
).fetchone()[0]
json.dump({"total": int(total)}, open(os.environ["LAMINAR_RESULT"], "w"))
"""


def env(attempt: int = 1) -> ActivityEnvironment:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        environment.info, heartbeat_timeout=timedelta(seconds=10), attempt=attempt
    )
    return environment


def step_input(
    step: Step, source: Path, run: str = "acme/shop/2026-01-31", **upstream: UpstreamResult
) -> RunStepInput:
    context = RunContext.manual("shop", run, datetime(2026, 1, 31, tzinfo=UTC))
    context = context.model_copy(update={"tenant": TENANT})
    return RunStepInput(step=step, context=context, source_dir=str(source), upstream=upstream)


@dataclasses.dataclass
class Worker:
    warehouse: DuckDBEngine
    activities: StepActivities
    work: Path


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStorage:
    return ArtifactStorage(f"file://{tmp_path / 'store'}")


@pytest.fixture
def workers(tmp_path: Path, store: ArtifactStorage) -> Any:
    made = []
    for name in ("w1", "w2"):
        warehouse = DuckDBEngine(tmp_path / f"{name}.duckdb")

        async def secrets(tenant: str, names: set[str]) -> dict[str, str]:
            return {"token": PLANTED} if tenant == TENANT else {}

        activities = StepActivities(
            build_executors(warehouse),
            tmp_path / name,
            warehouse=warehouse,
            artifacts=store,
            secrets=secrets,
            log_upload_every=timedelta(seconds=0.2),
        )
        made.append(Worker(warehouse, activities, tmp_path / name))
    yield made
    for worker in made:
        worker.warehouse.close()


def pipeline_files(tmp_path: Path) -> Path:
    source = tmp_path / "pipeline"
    source.mkdir(exist_ok=True)
    (source / "produce.py").write_text(PRODUCE)
    (source / "consume.py").write_text(CONSUME)
    return source


PRODUCER = PythonStep(
    id="produce", type="python", script="produce.py", args=["7"], outputs={"sales": "sales.csv"}
)
CONSUMER = PythonStep(
    id="consume",
    type="python",
    script="consume.py",
    args=["{{ steps.produce.outputs.sales }}"],
    inputs=["sales"],
)


async def test_a_table_written_on_one_worker_is_read_on_another(
    tmp_path: Path, workers: list[Worker], store: ArtifactStorage
) -> None:
    source = pipeline_files(tmp_path)
    a, b = workers
    produced = await env().run(a.activities.run_step, step_input(PRODUCER, source))
    assert produced.tables == {"sales": "sales"}
    assert await b.warehouse.missing_tables(["sales"]) == ["sales"]
    key = table_key(TENANT, "acme/shop/2026-01-31", "produce", "sales")
    assert key.startswith("acme/runs/")
    assert key in store.keys(run_prefix(TENANT, "acme/shop/2026-01-31"))
    upstream = UpstreamResult(tables=produced.tables)
    consumed = await env().run(
        b.activities.run_step, step_input(CONSUMER, source, produce=upstream)
    )
    assert consumed.outputs == {"total": 12}
    assert await b.warehouse.missing_tables(["sales"]) == []


async def test_a_same_named_table_of_another_run_is_replaced_by_this_runs(
    tmp_path: Path, workers: list[Worker]
) -> None:
    """Table names are global in a worker's warehouse: yesterday's `sales` on worker B must not
    be read as today's, which worker A wrote."""
    source = pipeline_files(tmp_path)
    a, b = workers
    yesterday = "acme/shop/2026-01-30"
    stale = PRODUCER.model_copy(update={"args": ["100"]})
    await env().run(b.activities.run_step, step_input(stale, source, run=yesterday))
    produced = await env().run(a.activities.run_step, step_input(PRODUCER, source))
    consumed = await env().run(
        b.activities.run_step,
        step_input(CONSUMER, source, produce=UpstreamResult(tables=produced.tables)),
    )
    assert consumed.outputs == {"total": 12}  # 7 + 5, not 100 + 5


async def test_a_table_in_neither_place_fails_with_that_said(
    tmp_path: Path, workers: list[Worker]
) -> None:
    source = pipeline_files(tmp_path)
    _, b = workers
    with pytest.raises(ApplicationError) as caught:
        await env().run(
            b.activities.run_step,
            step_input(CONSUMER, source, produce=UpstreamResult(tables={"sales": "sales"})),
        )
    assert caught.value.type == "TableOnOtherWorker" and caught.value.non_retryable
    assert "neither in this worker's DuckDB warehouse nor in the artifact store" in str(
        caught.value
    )


async def test_without_a_store_the_error_points_at_the_setting(tmp_path: Path) -> None:
    source = pipeline_files(tmp_path)
    first, second = DuckDBEngine(tmp_path / "a.duckdb"), DuckDBEngine(tmp_path / "b.duckdb")
    try:
        a = StepActivities(build_executors(first), tmp_path / "a", warehouse=first)
        b = StepActivities(build_executors(second), tmp_path / "b", warehouse=second)
        produced = await env().run(a.run_step, step_input(PRODUCER, source))
        with pytest.raises(ApplicationError) as caught:
            await env().run(
                b.run_step,
                step_input(CONSUMER, source, produce=UpstreamResult(tables=produced.tables)),
            )
        assert caught.value.type == "TableOnOtherWorker"
        assert "LAMINAR_ARTIFACT_URL" in str(caught.value)
        assert not (tmp_path / "a" / ".handoff").exists()  # nothing exported without a store
    finally:
        first.close()
        second.close()


def sql(step_id: str, text: str, preview: int = 0) -> SqlStep:
    return SqlStep(id=step_id, type="sql", sql=text, preview_rows=preview)


ORDERS = sql(
    "orders",
    "CREATE SCHEMA mart; "
    "CREATE TABLE orders AS SELECT * FROM (VALUES ('EU', 30), ('US', 12)) t(region, amount); "
    "CREATE TABLE mart.regions AS SELECT DISTINCT region FROM orders; "
    "CREATE TABLE scratch_unused (x INTEGER); DROP TABLE scratch_unused",
)
TOTAL = "SELECT sum(amount) AS total, (SELECT count(*) FROM mart.regions) AS regions FROM orders"


async def test_tables_a_sql_step_creates_cross_to_a_sql_step_on_another_worker(
    tmp_path: Path, workers: list[Worker], store: ArtifactStorage
) -> None:
    """SQL -> SQL across workers: what a sql step created or wrote is asked from DuckDB
    (before/after), recorded in `StepResult.written` (not in `tables`, the templating names),
    exported, and imported by a downstream step that is given it as `handoff_tables`."""
    source = pipeline_files(tmp_path)
    a, b = workers
    run_id = "acme/shop/2026-01-31"
    created = await env().run(a.activities.run_step, step_input(ORDERS, source))
    assert created.written == ["mart.regions", "orders"] and created.tables == {}
    keys = store.keys(run_prefix(TENANT, run_id))
    assert {table_key(TENANT, run_id, "orders", t) for t in created.written} <= set(keys)
    # A step imports only the tables its statements name (sqlglot), not every one upstream.
    regions = await env().run(
        b.activities.run_step,
        step_input(sql("regions", "SELECT count(*) FROM mart.regions", preview=1), source)
        .model_copy(update={"handoff_tables": {"orders": "orders", "mart.regions": "orders"}}),
    )  # fmt: skip
    assert regions.outputs["preview"]["rows"] == [[2]]
    assert await b.warehouse.missing_tables(["orders", "mart.regions"]) == ["orders"]
    # Worker B has not seen `orders` yet: it imports it and grows it.
    grow = sql("grow", "INSERT INTO orders VALUES ('APAC', 8)")
    grown = await env().run(
        b.activities.run_step,
        step_input(grow, source).model_copy(
            update={"handoff_tables": {"orders": "orders", "mart.regions": "orders"}}
        ),
    )
    assert grown.written == ["orders"]
    # Back on worker A, which holds this run's `orders` as step `orders` wrote it: the latest
    # writer is `grow`, so A's copy is replaced by grow's. An UPDATE changes neither the
    # table's oid nor its size: sqlglot names the table it writes.
    fix = sql("fix", "UPDATE orders SET amount = 31 WHERE region = 'EU'")
    fixed = await env().run(
        a.activities.run_step,
        step_input(fix, source).model_copy(update={"handoff_tables": {"orders": "grow"}}),
    )
    assert fixed.written == ["orders"]
    totals = await env().run(
        b.activities.run_step,
        step_input(sql("totals", TOTAL, preview=1), source).model_copy(
            update={"handoff_tables": {"orders": "fix", "mart.regions": "orders"}}
        ),
    )
    assert totals.outputs["preview"]["rows"] == [[51, 2]], totals.outputs  # 31 + 12 + 8
    assert totals.written == []  # a query writes nothing


async def test_a_select_only_step_writes_nothing_and_needs_no_store_round_trip(
    tmp_path: Path, workers: list[Worker], store: ArtifactStorage
) -> None:
    source = pipeline_files(tmp_path)
    a, _ = workers
    result = await env().run(a.activities.run_step, step_input(sql("q", "SELECT 1 AS x"), source))
    assert result.written == []
    keys = store.keys(run_prefix(TENANT, "acme/shop/2026-01-31"))
    assert not [k for k in keys if "/tables/" in k], keys


async def test_a_sql_table_missing_from_the_store_fails_with_that_said(
    tmp_path: Path, workers: list[Worker]
) -> None:
    source = pipeline_files(tmp_path)
    _, b = workers
    with pytest.raises(ApplicationError) as caught:
        await env().run(
            b.activities.run_step,
            step_input(sql("totals", TOTAL), source).model_copy(
                update={"handoff_tables": {"orders": "orders"}}
            ),
        )
    assert caught.value.type == "TableOnOtherWorker" and caught.value.non_retryable
    assert "'orders' (from step 'orders')" in str(caught.value)


async def test_without_a_store_sql_steps_record_no_written_tables(tmp_path: Path) -> None:
    """The single-worker path (`laminar run`, no store) does none of the extra work."""
    source = pipeline_files(tmp_path)
    warehouse = DuckDBEngine(tmp_path / "solo.duckdb")
    try:
        solo = StepActivities(build_executors(warehouse), tmp_path / "solo", warehouse=warehouse)
        created = await env().run(solo.run_step, step_input(ORDERS, source))
        assert created.written == []
        totals = await env().run(solo.run_step, step_input(sql("totals", TOTAL, preview=1), source))
        assert totals.outputs["preview"]["rows"] == [[42, 2]]
    finally:
        warehouse.close()


async def test_each_attempts_log_is_uploaded_masked_and_the_api_reads_it(
    tmp_path: Path, workers: list[Worker], store: ArtifactStorage
) -> None:
    source = tmp_path / "pipeline"
    source.mkdir()
    (source / "leaky.py").write_text(
        "import os, sys\n"
        "print('attempt says', sys.argv[1], 'token', os.environ['TOKEN'], flush=True)\n"
        "sys.exit(int(sys.argv[1] == 'one'))\n"
    )
    run_id = "acme/shop/2026-01-31"
    step = PythonStep(
        id="leaky",
        type="python",
        script="leaky.py",
        args=["one"],
        env={"TOKEN": SecretRef(secret="token")},
    )
    a, _ = workers
    with pytest.raises(ApplicationError):
        await env(attempt=1).run(a.activities.run_step, step_input(step, source))
    second = step.model_copy(update={"args": ["two"]})
    await env(attempt=2).run(a.activities.run_step, step_input(second, source))
    first_log, _ = store.objects.get(log_key(TENANT, run_id, "leaky", 1))
    second_log, _ = store.objects.get(log_key(TENANT, run_id, "leaky", 2))
    assert b"attempt says one token ***" in first_log and PLANTED.encode() not in first_log
    assert b"attempt says two token ***" in second_log and PLANTED.encode() not in second_log
    assert b"one" not in second_log  # each attempt's own part of step.log
    # The API's reader: the server has no such file (another host), so the store answers.
    rows = [
        StepRun(step_id="leaky", attempt=n, log_path=str(a.work / "elsewhere.log")) for n in (1, 2)
    ]
    logs = StepLogs(tmp_path / "server-work", store)
    tails = logs.tails(TENANT, run_id, rows)
    assert "attempt says two token ***" in (tails[("leaky", 2)] or "")
    assert logs.tails("other-tenant", run_id, rows) == {("leaky", 1): None, ("leaky", 2): None}
    assert StepLogs(tmp_path / "server-work").tails(TENANT, run_id, rows)[("leaky", 2)] is None


async def test_a_long_steps_log_is_uploaded_while_it_runs(
    tmp_path: Path, workers: list[Worker], store: ArtifactStorage
) -> None:
    source = tmp_path / "pipeline"
    source.mkdir()
    (source / "slow.py").write_text(
        "import os, time\nprint('started with', os.environ['TOKEN'], flush=True)\n"
        "time.sleep(3)\nprint('done', flush=True)\n"
    )
    # The local log is masked only when the script ends: what goes up meanwhile is masked
    # on the way.
    step = PythonStep(
        id="slow", type="python", script="slow.py", env={"TOKEN": SecretRef(secret="token")}
    )
    a, _ = workers
    task = asyncio.create_task(env().run(a.activities.run_step, step_input(step, source)))
    key = log_key(TENANT, "acme/shop/2026-01-31", "slow", 1)
    seen = b""
    for _ in range(40):  # up to 2 s of the 3 s step
        await asyncio.sleep(0.05)
        if key in store.keys(""):
            seen, _ = store.objects.get(key)
            if b"started" in seen:
                break
    assert b"started with ***" in seen and b"done" not in seen and not task.done()
    assert PLANTED.encode() not in seen
    await task
    final, _ = store.objects.get(key)
    assert b"done" in final


def test_keys_are_confined_to_the_tenant_and_run() -> None:
    key = log_key("acme", "acme/../../other/run", "../x", 1)
    assert key.startswith("acme/runs/") and ".." not in key.split("/")
    assert "/other/" not in key
    # Run ids that read alike after the unsafe characters go still get keys of their own.
    assert run_prefix("acme", "acme/p/key:a b") != run_prefix("acme", "acme/p/key:a_b")
    assert duckdb  # the consumer script's import, present in the test environment


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("s3://bucket/prefix", True),
        ("file:///srv/artifacts", True),
        ("/srv/artifacts", True),
        ("ftp://host/x", False),
        ("memory://x", False),  # per process: no other worker would see it
        (" ", False),
    ],
)
def test_the_artifact_url_setting_is_checked(url: str, ok: bool) -> None:
    from pydantic import ValidationError

    from pipeline_service.settings import ServiceSettings

    if ok:
        assert ServiceSettings(artifact_url=url).artifact_url == url
    else:
        with pytest.raises(ValidationError, match="artifact_url"):
            ServiceSettings(artifact_url=url)
