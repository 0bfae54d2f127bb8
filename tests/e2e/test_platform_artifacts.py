"""A DuckDB table handed between workers through the artifact store. Two `laminar worker`
processes on one task queue, each with its own DuckDB warehouse and work directory; the store
is moto's S3 server (tests/s3_standin.py: the stand-in for S3, no cloud store is reachable
here). `produce` loads a table on one worker; that worker is then killed with SIGKILL and its
directory removed (its disk is gone), so `consume` runs on the other worker, which has never
seen the table: it comes from the store and the run SUCCEEDS with the right total, and the
API shows the log tail of `produce`, written on the dead worker. Without LAMINAR_ARTIFACT_URL
the same run FAILS with TableOnOtherWorker, pointing at the setting."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline_service.temporal.dev_server import DevServer
from tests.e2e.conftest import Cli, Platform, pid_gone, running_platform, wait_for
from tests.s3_standin import S3StandIn

pytestmark = pytest.mark.slow

PRODUCE = """\
import os
from pathlib import Path
with open(os.environ["LEDGER"], "a") as ledger:
    ledger.write(f"produce {os.environ['LAMINAR_OUTPUT_DIR']}\\n")
Path("sales.csv").write_text("region,amount\\nEU,30\\nUS,12\\n")
print("produce wrote 2 rows of sales", flush=True)
"""
GATE = """\
import os, time
with open(os.environ["LEDGER"], "a") as ledger:
    ledger.write(f"gate {os.environ['LAMINAR_OUTPUT_DIR']}\\n")
time.sleep(float(os.environ["PAUSE"]))
"""
CONSUME = """\
import duckdb, json, os
with open(os.environ["LEDGER"], "a") as ledger:
    ledger.write(f"consume {os.environ['LAMINAR_OUTPUT_DIR']}\\n")
context = json.load(open(os.environ["LAMINAR_CONTEXT"]))
path = context["inputs"]["sales"]
total = duckdb.connect().execute("SELECT sum(amount) FROM read_parquet(?)", [path]).fetchone()[0]
json.dump({"total": int(total)}, open(os.environ["LAMINAR_RESULT"], "w"))
"""


def pipeline_yaml(ledger: Path) -> str:
    common = f'    env: {{LEDGER: "{ledger}", PAUSE: "5"}}\n    heartbeat_timeout: 3s\n'
    return (
        "name: handoff\nsteps:\n"
        "  - id: produce\n    type: python\n    script: produce.py\n"
        "    outputs: {sales: sales.csv}\n" + common + "  - id: gate\n    type: python\n"
        "    script: gate.py\n    depends_on: [produce]\n"
        "    retry: {max_attempts: 2, initial_interval: 0.2}\n" + common + "  - id: consume\n"
        "    type: python\n    script: consume.py\n    depends_on: [gate, produce]\n"
        '    args: ["{{ steps.produce.outputs.sales }}"]\n    inputs: [sales]\n' + common
    )


@contextlib.contextmanager
def platform(
    cli: Cli, dev_server: DevServer, s3: S3StandIn, tmp_path: Path, project: Path, bucket: str,
    with_store: bool,
) -> Iterator[Platform]:  # fmt: skip
    """The server and two workers (each with its own DuckDB warehouse), with the artifact
    store or without; the project applied."""
    store = {}
    if with_store:
        store = s3.env() | {
            "LAMINAR_ARTIFACT_URL": f"s3://{bucket}/artifacts",
            "LAMINAR_ARTIFACT_LOG_INTERVAL": "1s",
        }
    with running_platform(cli, dev_server.address, tmp_path, env=store) as shared:
        applied = cli.run("pipelines", "apply", project, env=shared.client_env)
        assert applied.code == 0, applied.details
        yield shared


def kill_worker(platform: Platform, name: str, home: Path) -> None:
    """SIGKILL the worker and remove its directory: its disk (warehouse, logs) is gone."""
    os.kill(platform.workers[name].pid, signal.SIGKILL)
    wait_for(lambda: pid_gone(platform.workers[name].pid), 10, "the killed worker to go")
    shutil.rmtree(home)


def wait_for_run(http: httpx.Client, run: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while run["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        assert time.monotonic() < deadline, run
        time.sleep(0.5)
        run = http.get(f"/v1/runs/{run['id']}").json()
    return run


@pytest.mark.parametrize("with_store", [True, False], ids=["artifact-store", "no-store"])
def test_a_table_crosses_workers_through_the_artifact_store(
    cli: Cli, dev_server: DevServer, s3: S3StandIn, tmp_path: Path, with_store: bool
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "produce.py").write_text(PRODUCE)
    (project / "gate.py").write_text(GATE)
    (project / "consume.py").write_text(CONSUME)
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    (project / "pipeline.yaml").write_text(pipeline_yaml(ledger))
    bucket = s3.new_bucket()
    with platform(cli, dev_server, s3, tmp_path, project, bucket, with_store) as shared:
        workers = shared.workers

        def ran_on(step: str) -> list[str]:
            return [
                name
                for line in ledger.read_text().splitlines()
                for name in workers
                if line.split(" ", 1)[0] == step and f"/{name}/" in line
            ]

        with shared.http() as http:
            run: dict[str, Any] = http.post("/v1/pipelines/handoff/runs", json={}).json()
            assert "id" in run, run
            wait_for(lambda: ran_on("gate"), 60, "the gate step to start", interval=0.2)
            [producer] = ran_on("produce")
            # The worker that wrote the table dies and its disk with it.
            kill_worker(shared, producer, tmp_path / producer)
            run = wait_for_run(http, run)
        survivor = next(n for n in workers if n != producer)
        steps = {s["step_id"]: s for s in run["steps"]}
        details = (run, workers[survivor].output())
        if with_store:
            assert run["status"] == "SUCCEEDED", details
            assert ran_on("consume") == [survivor]
            assert steps["consume"]["attempts"][-1]["outputs"] == {"total": 42}
            # produce ran on the dead worker: its log tail comes from the store.
            tail = steps["produce"]["attempts"][-1]["log_tail"]
            assert tail is not None and "produce wrote 2 rows of sales" in tail, steps
            keys = s3.keys(bucket, "artifacts/")
            assert any(k.startswith("artifacts/acme/runs/") and "/produce/tables/" in k
                       for k in keys), keys  # fmt: skip
            assert all(k.startswith("artifacts/acme/") for k in keys), keys
        else:
            assert run["status"] == "FAILED", details
            assert ran_on("consume") == []
            consume = steps["consume"]["attempts"][-1]
            assert consume["error_type"] == "TableOnOtherWorker", consume
            assert "LAMINAR_ARTIFACT_URL" in consume["error"]
            assert steps["produce"]["attempts"][-1]["log_tail"] is None  # its disk is gone
            assert s3.keys(bucket) == []
        shared.stop(survivor)


def sql_pipeline_yaml(ledger: Path, marker: Path) -> str:
    """SQL -> SQL: `orders` creates two tables (and says which warehouse it ran in), `gate`
    holds the run while that worker is killed, `grow` inserts and updates, `report` reads."""
    common = f'    env: {{LEDGER: "{ledger}", PAUSE: "5"}}\n    heartbeat_timeout: 3s\n'
    orders = (
        "CREATE OR REPLACE TABLE orders AS SELECT * FROM (VALUES ('EU', 30), ('US', 12)) "
        "t(region, amount); CREATE SCHEMA IF NOT EXISTS mart; "
        "CREATE OR REPLACE TABLE mart.regions AS SELECT DISTINCT region FROM orders; "
        "COPY (SELECT path FROM duckdb_databases() WHERE database_name = current_database()) "
        f"TO '{marker}' (HEADER false)"
    )
    return (
        "name: sql_handoff\nsteps:\n"
        f'  - id: orders\n    type: sql\n    sql: "{orders}"\n'
        "  - id: gate\n    type: python\n    script: gate.py\n    depends_on: [orders]\n"
        "    retry: {max_attempts: 2, initial_interval: 0.2}\n" + common +
        "  - id: grow\n    type: sql\n    depends_on: [gate]\n"
        "    sql: \"INSERT INTO orders VALUES ('APAC', 8); "
        "UPDATE orders SET amount = 31 WHERE region = 'EU'\"\n"
        "  - id: report\n    type: sql\n    depends_on: [grow]\n    preview_rows: 1\n"
        '    sql: "SELECT sum(amount) AS total, (SELECT count(*) FROM mart.regions) AS regions '
        'FROM orders"\n'
    )  # fmt: skip


def test_tables_sql_steps_create_cross_workers_through_the_artifact_store(
    cli: Cli, dev_server: DevServer, s3: S3StandIn, tmp_path: Path
) -> None:
    """The commonest pipeline, SQL -> SQL: the worker whose warehouse got `orders` and
    `mart.regions` (`CREATE TABLE ... AS`, no `outputs:`) is killed with its disk; `grow` and
    `report` run on the other worker, which imports them from the store (report names no
    upstream step in a template: only `depends_on`, through `gate`)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "gate.py").write_text(GATE)
    ledger, marker = tmp_path / "ledger.txt", tmp_path / "orders-ran-in.csv"
    ledger.touch()
    (project / "pipeline.yaml").write_text(sql_pipeline_yaml(ledger, marker))
    bucket = s3.new_bucket()
    with platform(cli, dev_server, s3, tmp_path, project, bucket, True) as shared:
        with shared.http() as http:
            run: dict[str, Any] = http.post("/v1/pipelines/sql_handoff/runs", json={}).json()
            assert "id" in run, run
            wait_for(marker.exists, 60, "the orders step to run", interval=0.1)

            def orders_done() -> bool:
                steps = http.get(f"/v1/runs/{run['id']}").json()["steps"]
                return any(s["step_id"] == "orders" and s["status"] == "SUCCEEDED" for s in steps)

            # Killed once `orders` succeeded (its tables exported), while `gate` holds the run.
            wait_for(orders_done, 30, "the orders step to succeed", interval=0.1)
            warehouse = marker.read_text().strip()
            [writer] = [name for name in shared.workers if f"/{name}/" in warehouse]
            kill_worker(shared, writer, tmp_path / writer)
            run = wait_for_run(http, run)
        survivor = next(n for n in shared.workers if n != writer)
        steps = {s["step_id"]: s for s in run["steps"]}
        assert run["status"] == "SUCCEEDED", (run, shared.workers[survivor].output())
        report = steps["report"]["attempts"][-1]["outputs"]
        assert report["preview"]["rows"] == [[51, 2]], report  # 31 + 12 + 8; EU and US
        keys = s3.keys(bucket, "artifacts/")
        written = [k for k in keys if "/tables/" in k]
        assert sum("/orders/tables/" in k for k in written) == 2, keys  # orders, mart.regions
        assert sum("/grow/tables/" in k for k in written) == 1, keys  # orders again
        assert all(k.startswith("artifacts/acme/") for k in keys), keys
        shared.stop(survivor)
