"""`laminar run` with compute engines, as a user runs it: the compute_engines example (Spark
local[2], a local Flink session cluster started for the run, DuckDB over their outputs), and a
kill -9 in the middle of a Spark job followed by a resume that leaves no second driver.

The `cli` fixture fails a test if any process mentioning its tmp_path (a Spark driver, a Flink
JVM, the Temporal server) outlives it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import duckdb
import psutil
import pytest

from tests.e2e.conftest import EXAMPLES, Cli, pid_gone, processes_under, wait_for

pytestmark = pytest.mark.slow


def spark_drivers_under(path: Path) -> list[psutil.Process]:
    drivers = []
    for process in processes_under(path):
        try:  # it may exit (or be a zombie) between the listing and these calls
            if process.name() == "java" and any(
                "spark.laminar.step=" in arg for arg in process.cmdline()
            ):
                drivers.append(process)
        except psutil.Error:
            continue
    return drivers


def test_compute_engines_example(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    state = tmp_path / "state"
    result = cli.run(
        "run",
        "--once",
        EXAMPLES / "compute_engines.yaml",
        "--no-ui",
        "--state-dir",
        state,
        "--param",
        f"out={out}",
        timeout=300,
    )
    assert result.code == 0, result.details
    assert "Traceback" not in result.output
    assert "flink       http://127.0.0.1:" in result.stdout
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as db:
        rows = db.sql("SELECT region, orders, events FROM engine_report").fetchall()
    assert [r[0] for r in rows] == ["east", "north", "south", "west"]
    assert sum(r[1] for r in rows) == 300_000  # every generated order, counted by Spark
    assert sum(r[2] for r in rows) == 200_000  # every generated event, counted by Flink
    # The last step ran in its own virtualenv with `tabulate` (Laminar does not depend on it).
    assert "render.rows = 4" in result.stdout, result.details
    [report] = (state / "work").glob("*/render/engine_report.md")
    assert "| region" in report.read_text()


SLOW_SPARK_APP = """\
import sys, time
from pathlib import Path
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
if (Path(sys.argv[1]) / "hang").exists():
    spark.sparkContext.parallelize(range(2), 2).map(lambda x: time.sleep(3600)).collect()
spark.range(10).write.mode("overwrite").parquet(sys.argv[1] + "/out")
spark.stop()
"""


def test_kill_9_mid_spark_job_then_resume_leaves_one_driver(cli: Cli, tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "app.py").write_text(SLOW_SPARK_APP)
    data = tmp_path / "data"
    data.mkdir()
    (data / "hang").touch()
    (pipeline / "p.yaml").write_text(
        "name: spark-resume\n"
        "steps:\n"
        "  - id: spark\n"
        "    type: spark\n"
        "    application: app.py\n"
        f"    args: ['{data}']\n"
        "    heartbeat_timeout: 30s\n"
    )
    args = ("run", "--once", pipeline / "p.yaml", "--no-ui", "--state-dir", tmp_path / "state")
    crashed = cli.start(*args)
    wait_for(lambda: spark_drivers_under(tmp_path), 120, "the Spark driver to start", 0.5)
    [driver] = spark_drivers_under(tmp_path)
    time.sleep(3)  # let the job reach its hanging stage

    os.kill(crashed.pid, signal.SIGKILL)
    assert crashed.wait(10).code == -signal.SIGKILL
    # The driver dies with laminar (PR_SET_PDEATHSIG): it is not left running beside a resume.
    wait_for(lambda: pid_gone(driver.pid), 15, f"the orphaned Spark driver {driver.pid} to die")

    (data / "hang").unlink()
    drivers_seen: set[int] = set()
    resumed = cli.start(*args)
    deadline = time.monotonic() + 180
    while resumed.proc.poll() is None and time.monotonic() < deadline:
        running = spark_drivers_under(tmp_path)
        assert len(running) <= 1, running
        drivers_seen.update(p.pid for p in running)
        time.sleep(0.3)
    result = resumed.wait(10)
    assert result.code == 0, result.details
    assert "resuming" in result.stdout, result.details
    assert driver.pid not in drivers_seen
    assert (data / "out").is_dir()
