"""Flink steps on a real local Flink session cluster (JobManager + TaskManager from the
apache-flink packages, started once for the session): a batch SQL job end to end, a failing
job's root exception, cancel (the job is really CANCELED), and a retry that cancels the job an
earlier attempt left running."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.pipeline import FlinkStep
from schemas.run import RunContext
from steps.base import StepContext, StepError, step_tag
from steps.flink import FlinkExecutor
from steps.flink_job import FlinkOptions, client_conf_dir, job_config, sql_command, write_sql_job
from steps.flink_local import DEFAULT_TOOL_DIR, LocalFlinkCluster
from steps.process import tagged_groups
from steps.registry import execute_step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def flink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFlinkCluster]:
    cluster = LocalFlinkCluster(DEFAULT_TOOL_DIR, tmp_path_factory.mktemp("flink"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def count_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/integration/flink_jobs/CountJob.java compiled against the Flink distribution."""
    if shutil.which("javac") is None or shutil.which("jar") is None:
        pytest.skip("the jar tests compile a small Flink job and need a JDK (javac, jar)")
    build = tmp_path_factory.mktemp("count_jar")
    source = Path(__file__).with_name("flink_jobs") / "CountJob.java"
    lib = DEFAULT_TOOL_DIR / "pyflink" / "lib"
    subprocess.run(
        ["javac", "-d", str(build / "classes"), "-cp", f"{lib}/*", str(source)], check=True
    )
    (build / "pipeline").mkdir()
    jar = build / "pipeline" / "count.jar"
    subprocess.run(["jar", "cf", str(jar), "-C", str(build / "classes"), "."], check=True)
    return jar


class Beats:
    def __init__(self) -> None:
        self.details: list[dict[str, Any]] = []

    def __call__(self, *details: Any) -> None:
        if details:
            self.details.append(details[0])


def make_ctx(tmp_path: Path, attempt: int = 1) -> tuple[StepContext, Beats]:
    beats = Beats()
    moment = datetime(2026, 1, 31, tzinfo=UTC)
    run = RunContext.manual("flink-test", f"test/flink/{tmp_path.name}", moment, {"rows": 1000})
    ctx = StepContext(
        run=run,
        step_id="agg",
        attempt=attempt,
        idempotency_key=f"{run.run_id}/agg",
        source_dir=tmp_path,
        work_dir=tmp_path / "work",
        heartbeat=beats,
    )
    return ctx, beats


def source(rows: str, per_second: int | None = None) -> str:
    throttle = f", 'rows-per-second' = '{per_second}'" if per_second else ""
    return (
        "CREATE TABLE src (k INT, v BIGINT) WITH ('connector' = 'datagen', "
        f"'number-of-rows' = '{rows}', 'fields.k.min' = '0', 'fields.k.max' = '9'{throttle});\n"
    )


def sink(path: Path) -> str:
    return (
        "CREATE TABLE dst (k INT, c BIGINT, d STRING) WITH ('connector' = 'filesystem', "
        f"'path' = '{path}', 'format' = 'csv');\n"
    )


def job_state(cluster: LocalFlinkCluster, job_id: str) -> str:
    return str(httpx.get(f"{cluster.rest_url}/jobs/{job_id}").json()["state"])


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


def running_jobs(cluster: LocalFlinkCluster) -> list[dict[str, Any]]:
    jobs = httpx.get(f"{cluster.rest_url}/jobs/overview").json()["jobs"]
    return [job for job in jobs if job["state"] in ("RUNNING", "CREATED", "INITIALIZING")]


async def test_batch_sql_runs_to_finished_with_templated_literals(
    flink: LocalFlinkCluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    step = FlinkStep(
        id="agg",
        type="flink",
        sql=source("{{ params.rows }}")
        + sink(out)
        + "INSERT INTO dst SELECT k, count(*), {{ ds }} FROM src GROUP BY k;",
    )
    ctx, beats = make_ctx(tmp_path)
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url, poll_interval=0.5))
    result = await execute_step({"flink": executor}, step, ctx)
    [job_id] = result.outputs["job_ids"]
    assert job_state(flink, job_id) == "FINISHED"
    rows = [row for f in out.rglob("*") if f.is_file() for row in csv.reader(f.open())]
    assert sorted(int(r[0]) for r in rows) == list(range(10))
    assert sum(int(r[1]) for r in rows) == 1000
    assert {r[2] for r in rows} == {"2026-01-31"}
    assert beats.details and beats.details[-1]["state"] == "FINISHED"
    assert beats.details[-1]["job_id"] == job_id


async def test_a_failing_job_reports_the_root_exception_from_the_cluster(
    flink: LocalFlinkCluster, tmp_path: Path
) -> None:
    step = FlinkStep(
        id="agg",
        type="flink",
        sql=source("100")
        + sink(tmp_path / "out")
        # k - k is 0: integer division fails at run time, inside the job.
        + "INSERT INTO dst SELECT k, v / (k - k), 'x' FROM src;",
    )
    ctx, _ = make_ctx(tmp_path)
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url, poll_interval=0.5))
    with pytest.raises(StepError) as info:
        await execute_step({"flink": executor}, step, ctx)
    first = info.value.message.splitlines()[0]
    assert first.startswith("Flink job ") and "FAILED: java.lang.ArithmeticException" in first
    assert info.value.error_type == "FlinkJobFailed"


async def test_invalid_sql_is_a_non_retryable_error_with_the_validation_message(
    flink: LocalFlinkCluster, tmp_path: Path
) -> None:
    step = FlinkStep(id="agg", type="flink", sql="INSERT INTO nowhere SELECT 1;")
    ctx, _ = make_ctx(tmp_path)
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url))
    with pytest.raises(StepError) as info:
        await execute_step({"flink": executor}, step, ctx)
    assert info.value.error_type == "FlinkUserError" and not info.value.retryable
    assert "nowhere" in info.value.message.splitlines()[0]


async def test_cancel_stops_the_running_job(flink: LocalFlinkCluster, tmp_path: Path) -> None:
    step = FlinkStep(
        id="agg",
        type="flink",
        sql=source("100000000", per_second=5)
        + sink(tmp_path / "out")
        + "INSERT INTO dst SELECT k, v, 'x' FROM src;",
    )
    ctx, beats = make_ctx(tmp_path)
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url, poll_interval=0.5))
    task = asyncio.create_task(execute_step({"flink": executor}, step, ctx))
    try:
        await wait_for(
            lambda: any(d.get("state") == "RUNNING" for d in beats.details), 120, "the job to run"
        )
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    job_id = next(d["job_id"] for d in beats.details if d.get("state") == "RUNNING")
    await wait_for(lambda: job_state(flink, job_id) == "CANCELED", 30, "the job to be canceled")
    assert tagged_groups(f"laminar-tag={step_tag(ctx.idempotency_key)}") == set()


async def test_a_retry_cancels_the_job_an_earlier_attempt_left_running(
    flink: LocalFlinkCluster, tmp_path: Path
) -> None:
    step = FlinkStep(
        id="agg",
        type="flink",
        sql=source("100000000", per_second=5)
        + sink(tmp_path / "out")
        + "INSERT INTO dst SELECT k, v, 'x' FROM src;",
    )
    options = FlinkOptions(rest_url=flink.rest_url, poll_interval=0.5)
    ctx1, _ = make_ctx(tmp_path, attempt=1)
    tag = step_tag(ctx1.idempotency_key)
    # Attempt 1's driver and job outlived its worker: submitted here as attempt 1 would have.
    ctx1.work_dir.mkdir(parents=True)
    job_path = write_sql_job(step, options, ctx1, tag, ctx1.work_dir)
    env = {
        "PATH": os.environ["PATH"],
        "FLINK_CONF_DIR": str(client_conf_dir(options, job_config(step, options, tag), tmp_path)),
        "PYTHONPATH": str(options.tool_dir),
    }
    orphan = subprocess.Popen(
        sql_command(options, job_path, tag),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await wait_for(lambda: running_jobs(flink), 120, "attempt 1's job to run")
        [old] = running_jobs(flink)

        ctx2, beats = make_ctx(tmp_path, attempt=2)
        task = asyncio.create_task(execute_step({"flink": FlinkExecutor(options)}, step, ctx2))
        try:
            await wait_for(
                lambda: any(d.get("state") == "RUNNING" for d in beats.details), 120, "attempt 2"
            )
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert job_state(flink, old["jid"]) in ("CANCELED", "CANCELING")
        assert orphan.wait(timeout=10) is not None
        assert {d["job_id"] for d in beats.details} != {old["jid"]}
    finally:
        orphan.kill()
    await wait_for(lambda: not running_jobs(flink), 30, "no job left running")


async def test_a_jar_job_is_uploaded_run_and_followed_to_finished(
    flink: LocalFlinkCluster, count_jar: Path, tmp_path: Path
) -> None:
    step = FlinkStep(
        id="agg", type="flink", jar="count.jar", entry_class="CountJob", args=["{{ params.rows }}"]
    )
    ctx, beats = make_ctx(tmp_path)
    ctx = dataclasses.replace(ctx, source_dir=count_jar.parent)
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url, poll_interval=0.5))
    result = await execute_step({"flink": executor}, step, ctx)
    [job_id] = result.outputs["job_ids"]
    assert job_state(flink, job_id) == "FINISHED"
    assert beats.details[-1]["state"] == "FINISHED"
    jars = httpx.get(f"{flink.rest_url}/jars").json()["files"]
    assert jars == []  # the uploaded jar is removed once the job is submitted


async def test_a_failing_jar_job_reports_its_exception(
    flink: LocalFlinkCluster, count_jar: Path, tmp_path: Path
) -> None:
    step = FlinkStep(
        id="agg", type="flink", jar="count.jar", entry_class="CountJob", args=["9", "fail"]
    )
    ctx, _ = make_ctx(tmp_path)
    ctx = dataclasses.replace(ctx, source_dir=count_jar.parent)
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url, poll_interval=0.5))
    with pytest.raises(StepError) as info:
        await execute_step({"flink": executor}, step, ctx)
    assert "java.lang.IllegalStateException: count job failed at 5" in info.value.message


async def test_a_streaming_step_succeeds_once_its_job_runs(
    flink: LocalFlinkCluster, tmp_path: Path
) -> None:
    step = FlinkStep(
        id="agg",
        type="flink",
        mode="streaming",
        sql="CREATE TABLE src (k INT) WITH ('connector' = 'datagen', 'rows-per-second' = '5');\n"
        "CREATE TABLE dst (k INT) WITH ('connector' = 'blackhole');\n"
        "INSERT INTO dst SELECT k FROM src;",
    )
    ctx, _ = make_ctx(tmp_path)
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url, poll_interval=0.5))
    result = await execute_step({"flink": executor}, step, ctx)
    [job_id] = result.outputs["job_ids"]
    try:
        assert result.outputs["mode"] == "streaming"
        assert job_state(flink, job_id) == "RUNNING"  # it keeps running after the step
    finally:
        httpx.patch(f"{flink.rest_url}/jobs/{job_id}", params={"mode": "cancel"})
    await wait_for(lambda: job_state(flink, job_id) == "CANCELED", 30, "the job to stop")
