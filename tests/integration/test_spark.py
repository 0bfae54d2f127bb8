"""Spark steps on real Spark (`local[2]`, the Spark inside the pyspark package, a JVM per job):
success with progress, a failure's message, cancel mid-job, and a retry that finds the driver an
earlier attempt left running. Few and small: each spark-submit costs a JVM start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from schemas.pipeline import SparkStep
from schemas.run import RunContext
from steps.base import StepContext, StepError, step_tag
from steps.registry import execute_step
from steps.spark import SparkExecutor
from steps.spark_submit import SparkOptions, submit_command

pytestmark = pytest.mark.slow

APP = """\
import sys, time
from pathlib import Path
from pyspark.sql import SparkSession

mode = (Path(__file__).parent / "mode.txt").read_text().strip()
spark = SparkSession.builder.getOrCreate()
if mode == "sleep":  # a job that runs until it is stopped
    spark.sparkContext.parallelize(range(2), 2).map(lambda x: time.sleep(3600)).collect()
elif mode == "fail":
    def check(x):
        raise ValueError(f"bad row {x}")
    spark.sparkContext.parallelize(range(2), 2).map(check).collect()
else:
    out, day = sys.argv[1], sys.argv[2]
    frame = spark.range(200000).selectExpr("id % 10 AS k", f"'{day}' AS day")
    frame.groupBy("k", "day").count().write.mode("overwrite").parquet(out)
spark.stop()
"""


class Beats:
    def __init__(self) -> None:
        self.details: list[dict[str, Any]] = []

    def __call__(self, *details: Any) -> None:
        if details:
            self.details.append(details[0])


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline"
    path.mkdir()
    (path / "app.py").write_text(APP)
    (path / "mode.txt").write_text("run\n")
    return path


def make_ctx(tmp_path: Path, source_dir: Path, attempt: int = 1) -> tuple[StepContext, Beats]:
    beats = Beats()
    moment = datetime(2026, 1, 31, tzinfo=UTC)
    run = RunContext.manual("spark-test", f"test/spark/{tmp_path.name}", moment, {"n": 3})
    ctx = StepContext(
        run=run,
        step_id="agg",
        attempt=attempt,
        idempotency_key=f"{run.run_id}/agg",
        source_dir=source_dir,
        work_dir=tmp_path / "work" / "agg",
        heartbeat=beats,
    )
    return ctx, beats


def app_step(tmp_path: Path) -> SparkStep:
    return SparkStep(
        id="agg",
        type="spark",
        application="app.py",
        args=[str(tmp_path / "out"), "{{ ds }}"],
        conf={"spark.sql.shuffle.partitions": "2"},
        driver_memory="512m",
    )


def group_members(group: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (psutil.Error, ProcessLookupError):
            continue
    return members


def java_with_tag(tag: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if f"spark.laminar.step={tag}" in cmdline and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture(autouse=True)
def no_driver_left(tmp_path: Path) -> Iterator[None]:
    yield
    tag = step_tag(f"test/spark/{tmp_path.name}/agg")
    left = java_with_tag(tag)
    for process in left:
        process.kill()
    assert not left, "a Spark driver outlived its test"


async def test_an_application_runs_with_templated_args_and_reports_progress(
    tmp_path: Path, source_dir: Path
) -> None:
    ctx, beats = make_ctx(tmp_path, source_dir)
    result = await execute_step({"spark": SparkExecutor()}, app_step(tmp_path), ctx)
    import duckdb

    rows = duckdb.sql(
        f"SELECT k, day, \"count\" FROM '{tmp_path / 'out'}/*.parquet' ORDER BY k"
    ).fetchall()
    assert rows == [(k, "2026-01-31", 20000) for k in range(10)]
    assert result.outputs["jobs"] >= 1 and result.outputs["stages"] >= 2
    assert any(d.get("running_stage") is not None for d in beats.details), beats.details
    # While the driver ran, its REST API gave the progress (then the log's last lines did).
    assert any(d.get("source") == "spark-rest" for d in beats.details), beats.details
    assert beats.details[-1]["stages"].split("/")[0] == str(result.outputs["stages"])
    log = Path(result.log_path or "").read_text()
    assert "DAGScheduler" in log and "spark.laminar.step=" in log


async def test_sql_runs_statements_with_bound_parameters(tmp_path: Path, source_dir: Path) -> None:
    out = tmp_path / "sql_out"
    ctx, _ = make_ctx(tmp_path, source_dir)
    step = SparkStep(
        id="agg",
        type="spark",
        sql=(
            f"CREATE TABLE t USING parquet LOCATION '{out}' AS "
            "SELECT id, {{ params.n }} AS n, {{ logical_date }} AS ts FROM range(5);\n"
            "SELECT sum(n) AS total FROM t WHERE id < {{ params.n }};"
        ),
    )
    result = await execute_step({"spark": SparkExecutor()}, step, ctx)
    log = Path(result.log_path or "").read_text()
    assert "|9    |" in log  # 3 rows below 3, n = 3 each
    import duckdb

    rows = duckdb.sql(f"SELECT count(*), min(n), min(ts) FROM '{out}/*.parquet'").fetchall()
    assert rows[0][:2] == (5, 3)
    assert rows[0][2].isoformat().startswith("2026-01-31")


async def test_a_failing_job_reports_the_exception_not_the_whole_log(
    tmp_path: Path, source_dir: Path
) -> None:
    (source_dir / "mode.txt").write_text("fail\n")
    ctx, _ = make_ctx(tmp_path, source_dir)
    with pytest.raises(StepError) as info:
        await execute_step({"spark": SparkExecutor()}, app_step(tmp_path), ctx)
    error = info.value
    assert error.error_type == "SparkJobFailed" and error.retryable
    first_line = error.message.splitlines()[0]
    assert first_line.startswith("Spark job exited with 1: ValueError: bad row"), error.message
    assert len(error.message.splitlines()) <= 8
    assert "\tat org.apache" not in error.message


async def test_cancel_mid_job_stops_the_driver_process_tree(
    tmp_path: Path, source_dir: Path
) -> None:
    (source_dir / "mode.txt").write_text("sleep\n")
    ctx, beats = make_ctx(tmp_path, source_dir)
    executor = SparkExecutor(SparkOptions(terminate_grace=3.0))
    task = asyncio.create_task(execute_step({"spark": executor}, app_step(tmp_path), ctx))
    try:
        await wait_for(
            lambda: any(d.get("tasks") == "0/2" for d in beats.details), 120, "the stage to start"
        )
        group = int((ctx.work_dir / "spark-driver.pid").read_text())
        names = {p.name() for p in group_members(group)}
        assert "java" in names and any(n.startswith("python") for n in names), names
    finally:
        started = time.monotonic()
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 10
    assert group_members(group) == []
    assert java_with_tag(step_tag(ctx.idempotency_key)) == []


async def test_a_retry_stops_the_driver_an_earlier_attempt_left_running(
    tmp_path: Path, source_dir: Path
) -> None:
    # Attempt 1's driver outlived its worker: started here without the death signal a live
    # worker would give it, exactly as attempt 1 would have started it.
    (source_dir / "mode.txt").write_text("sleep\n")
    ctx1, _ = make_ctx(tmp_path, source_dir, attempt=1)
    step = app_step(tmp_path)
    executor = SparkExecutor()
    tag = step_tag(ctx1.idempotency_key)
    ctx1.work_dir.mkdir(parents=True)
    argv = submit_command(
        step,
        executor.options,
        run=ctx1.run,
        step_id="agg",
        attempt=1,
        tag=tag,
        source_dir=source_dir,
        work_dir=ctx1.work_dir,
    )
    orphan_log = tmp_path / "orphan.log"
    with orphan_log.open("wb") as out:
        orphan = subprocess.Popen(
            argv,
            env=executor._environment(ctx1.work_dir),
            cwd=ctx1.work_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await wait_for(
            lambda: "Starting task 1.0 in stage 0.0" in orphan_log.read_text(),
            120,
            "the orphaned driver's job to start",
        )
    except BaseException:
        orphan.kill()
        raise

    (source_dir / "mode.txt").write_text("run\n")
    ctx2, _ = make_ctx(tmp_path, source_dir, attempt=2)
    result = await execute_step({"spark": executor}, step, ctx2)
    assert result.attempt == 2
    assert orphan.wait(timeout=10) is not None  # stopped, not left beside attempt 2
    assert group_members(orphan.pid) == []
    log = (ctx2.work_dir / "step.log").read_text()
    assert f"stopping earlier drivers of this step: [{orphan.pid}]" in log
