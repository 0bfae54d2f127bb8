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
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowFailureError

from activities.steps import run_dir_name
from pipeline_service.temporal.worker import build_worker
from schemas.loading import validate_pipeline
from schemas.pipeline import FlinkStep
from schemas.run import RunContext, RunInput, RunSummary
from steps.base import StepContext, StepError, step_tag
from steps.engines.duckdb import DuckDBEngine
from steps.flink import FlinkExecutor
from steps.flink_job import (
    FlinkOptions,
    client_conf_dir,
    job_config,
    job_name,
    sql_command,
    write_sql_job,
)
from steps.flink_local import DEFAULT_TOOL_DIR, LocalFlinkCluster
from steps.process import tagged_groups
from steps.registry import execute_step
from workflows.pipeline_run import PipelineRunWorkflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def flink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFlinkCluster]:
    cluster = LocalFlinkCluster(DEFAULT_TOOL_DIR, tmp_path_factory.mktemp("flink"))
    cluster.start()
    yield cluster
    cluster.stop()


def compile_job(tmp_path_factory: pytest.TempPathFactory, name: str, jar_name: str) -> Path:
    """tests/integration/flink_jobs/<name>.java compiled against the Flink distribution, as
    `pipeline/<jar_name>` (the pipeline directory is the jar's parent)."""
    if shutil.which("javac") is None or shutil.which("jar") is None:
        pytest.skip("the jar tests compile a small Flink job and need a JDK (javac, jar)")
    build = tmp_path_factory.mktemp(name)
    source = Path(__file__).with_name("flink_jobs") / f"{name}.java"
    lib = DEFAULT_TOOL_DIR / "pyflink" / "lib"
    subprocess.run(
        ["javac", "-d", str(build / "classes"), "-cp", f"{lib}/*", str(source)], check=True
    )
    (build / "pipeline").mkdir()
    jar = build / "pipeline" / jar_name
    subprocess.run(["jar", "cf", str(jar), "-C", str(build / "classes"), "."], check=True)
    return jar


@pytest.fixture(scope="session")
def count_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch job: counts to args[0], fails at 5 with args[1] = fail."""
    return compile_job(tmp_path_factory, "CountJob", "count.jar")


@pytest.fixture(scope="session")
def tick_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A streaming job with keyed state (see TickJob.java for its arguments)."""
    return compile_job(tmp_path_factory, "TickJob", "tick.jar")


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


def restored_from(cluster: LocalFlinkCluster, job_id: str) -> dict[str, Any]:
    stats = httpx.get(f"{cluster.rest_url}/jobs/{job_id}/checkpoints").json()
    return dict((stats.get("latest") or {}).get("restored") or {})


async def test_a_failed_streaming_job_is_restarted_from_its_latest_checkpoint(
    flink: LocalFlinkCluster, client: Client, tmp_path: Path
) -> None:
    """The job fails on row 60 (a bad cast) and Flink itself does not restart it, so the
    attempt fails; the run's workflow retries the step under its retry policy, and the second
    attempt starts the job from the checkpoint the first one completed. Through the real
    worker and workflow on the dev server."""
    data = {
        "name": "stream",
        "steps": [
            {
                "id": "agg",
                "type": "flink",
                "mode": "streaming",
                "parallelism": 1,
                "savepoint_path": str(tmp_path / "state"),
                "retry": {"max_attempts": 2, "initial_interval": "1s"},
                "conf": {
                    "execution.checkpointing.interval": "500 ms",
                    "restart-strategy.type": "none",
                },
                "sql": "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', "
                "'rows-per-second' = '20', 'fields.id.kind' = 'sequence', "
                "'fields.id.start' = '1', 'fields.id.end' = '100000');\n"
                "CREATE TABLE dst (id INT) WITH ('connector' = 'blackhole');\n"
                "INSERT INTO dst SELECT CAST(IF(id = 60, 'boom', CAST(id AS STRING)) AS INT) "
                "FROM src;",
            }
        ],
    }
    definition = validate_pipeline(data, source_dir=tmp_path)
    moment = datetime(2026, 1, 31, tzinfo=UTC)
    context = RunContext.manual("stream", f"test/stream/{uuid.uuid4()}", moment, {})
    run = RunInput(pipeline=definition, context=context, source_dir=str(tmp_path))
    options = FlinkOptions(rest_url=flink.rest_url, poll_interval=0.3)
    queue = f"flink-{uuid.uuid4()}"
    engine = DuckDBEngine(tmp_path / "warehouse.duckdb")
    work_root = tmp_path / "work"
    try:
        async with build_worker(
            client, task_queue=queue, engine=engine, work_root=work_root, flink=options
        ):
            with pytest.raises(WorkflowFailureError) as failure:
                await client.execute_workflow(
                    PipelineRunWorkflow.run, run, id=context.run_id, task_queue=queue
                )
    finally:
        engine.close()
    summary = RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]
    [state] = summary.steps
    assert state.status == "FAILED" and state.attempt == 2  # the retry policy's two attempts
    assert state.error and "boom" in state.error
    assert "a retry restarts the job from checkpoint" in state.error

    name = job_name(step_tag(f"{context.run_id}/agg"))
    jobs = httpx.get(f"{flink.rest_url}/jobs/overview").json()["jobs"]
    first, second = sorted(
        (job for job in jobs if job["name"].startswith(name)), key=lambda job: job["start-time"]
    )
    assert first["state"] == second["state"] == "FAILED"
    stats = httpx.get(f"{flink.rest_url}/jobs/{first['jid']}/checkpoints").json()
    checkpoint = stats["latest"]["completed"]
    restored = restored_from(flink, second["jid"])
    # (Flink counts any restore from a given path as a savepoint restore: is_savepoint is set.)
    assert restored["id"] == checkpoint["id"]
    assert restored["external_path"] == checkpoint["external_path"]
    log = (work_root / run_dir_name(context.run_id) / "agg" / "step.log").read_text()
    assert f"attempt 2: starting from checkpoint {checkpoint['id']} of job {first['jid']}" in log


async def test_a_cancelled_streaming_step_stops_with_a_savepoint_and_a_rerun_resumes(
    flink: LocalFlinkCluster, tmp_path: Path
) -> None:
    sql = (
        "CREATE TABLE src (k INT) WITH ('connector' = 'datagen', 'rows-per-second' = '5');\n"
        "CREATE TABLE dst (k INT) WITH ('connector' = 'blackhole');\n"
        "INSERT INTO dst SELECT k FROM src;"
    )
    savepoints = tmp_path / "savepoints"
    conf = {"execution.checkpointing.interval": "1 s"}
    step = FlinkStep.model_validate(
        {
            "id": "agg",
            "type": "flink",
            "mode": "streaming",
            "sql": sql,
            "conf": conf,
            "savepoint_path": str(savepoints),
        }
    )
    assert step.until is None and step.timeout.days == 365  # runs until cancelled
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url, poll_interval=0.3))
    ctx, beats = make_ctx(tmp_path / "first")
    running = asyncio.create_task(execute_step({"flink": executor}, step, ctx))
    await wait_for(
        lambda: any(b.get("state") == "RUNNING" for b in beats.details), 90, "the job to run"
    )
    await asyncio.sleep(1)
    assert not running.done()  # a streaming step keeps running while its job does
    job_id = beats.details[-1]["job_id"]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert job_state(flink, job_id) == "FINISHED"  # stop-with-savepoint ends the job so
    [savepoint] = [d for d in savepoints.glob("savepoint-*") if (d / "_metadata").is_file()]

    # A new run of the step starts from that savepoint, and with `until` ends by itself.
    rerun = step.model_copy(update={"until": timedelta(seconds=3)})
    ctx2, beats2 = make_ctx(tmp_path / "second")
    result = await execute_step({"flink": executor}, rerun, ctx2)
    [job2] = result.outputs["job_ids"]
    assert result.outputs["state"] == "STOPPED"
    assert result.outputs["restored_from"] == str(savepoint)
    restored = restored_from(flink, job2)
    assert restored["is_savepoint"] and restored["external_path"].endswith(str(savepoint))
    assert job_state(flink, job2) == "FINISHED"
    assert result.outputs["savepoint"].endswith(
        next(d.name for d in savepoints.glob("savepoint-*") if d != savepoint)
    )
    assert any(b.get("restored_from") for b in beats2.details)


async def test_a_streaming_retry_follows_the_job_a_dead_worker_left_running(
    flink: LocalFlinkCluster, tmp_path: Path
) -> None:
    step = FlinkStep(
        id="agg",
        type="flink",
        mode="streaming",
        until=timedelta(seconds=2),
        savepoint_path=str(tmp_path / "savepoints"),
        sql="CREATE TABLE src (k INT) WITH ('connector' = 'datagen', 'rows-per-second' = '5');\n"
        "CREATE TABLE dst (k INT) WITH ('connector' = 'blackhole');\n"
        "INSERT INTO dst SELECT k FROM src;",
    )
    options = FlinkOptions(rest_url=flink.rest_url, poll_interval=0.5)
    ctx1, _ = make_ctx(tmp_path, attempt=1)
    tag = step_tag(ctx1.idempotency_key)
    # Attempt 1 submitted the job, then its worker died: the job runs on, unwatched.
    ctx1.work_dir.mkdir(parents=True)
    job_path = write_sql_job(step, options, ctx1, tag, ctx1.work_dir)
    env = {
        "PATH": os.environ["PATH"],
        "FLINK_CONF_DIR": str(client_conf_dir(options, job_config(step, options, tag), tmp_path)),
        "PYTHONPATH": str(options.tool_dir),
    }
    driver = subprocess.run(sql_command(options, job_path, tag), env=env, capture_output=True)
    assert driver.returncode == 0, driver.stdout[-2000:]
    [old] = running_jobs(flink)

    ctx2, _ = make_ctx(tmp_path, attempt=2)
    result = await execute_step({"flink": FlinkExecutor(options)}, step, ctx2)
    assert result.outputs["job_ids"] == [old["jid"]]  # followed on, not started again
    assert result.outputs["state"] == "STOPPED" and result.outputs["savepoint"]
    assert job_state(flink, old["jid"]) == "FINISHED"
    assert f"following job {old['jid']}" in (ctx2.work_dir / "step.log").read_text()
    assert not running_jobs(flink)


def tick_doc(tmp_path: Path, *args: str, **fields: Any) -> dict[str, Any]:
    """A streaming step running TickJob with the given arguments; checkpoints every 500 ms,
    Flink's own restarts off (a failure fails the attempt)."""
    return {
        "id": "agg",
        "type": "flink",
        "jar": "tick.jar",
        "entry_class": "TickJob",
        "args": list(args),
        "mode": "streaming",
        "parallelism": 1,
        "savepoint_path": str(tmp_path / "savepoints"),
        "conf": {"execution.checkpointing.interval": "500 ms", "restart-strategy.type": "none"},
        **fields,
    }


def tick_step(tmp_path: Path, *args: str, **fields: Any) -> FlinkStep:
    return FlinkStep.model_validate(tick_doc(tmp_path, *args, **fields))


async def test_a_streaming_jar_step_checkpoints_stops_with_a_savepoint_and_a_rerun_restores(
    flink: LocalFlinkCluster, tick_jar: Path, tmp_path: Path
) -> None:
    """A jar job (REST /jars/{id}/run): its checkpoints go where Laminar's configuration says
    (flinkConfiguration), cancel stops it with a savepoint, and a new run of the step finds
    that savepoint by listing `savepoint_path` and starts the job from it (savepointPath)."""
    step = tick_step(tmp_path, "50")
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url, poll_interval=0.3))
    ctx, beats = make_ctx(tmp_path / "first")
    ctx = dataclasses.replace(ctx, source_dir=tick_jar.parent)
    running = asyncio.create_task(execute_step({"flink": executor}, step, ctx))
    await wait_for(
        lambda: any(b.get("checkpoint") for b in beats.details), 120, "a completed checkpoint"
    )
    job_id = beats.details[-1]["job_id"]
    completed = httpx.get(f"{flink.rest_url}/jobs/{job_id}/checkpoints").json()["latest"]
    checkpoints = tmp_path / "savepoints" / "checkpoints" / job_id
    assert completed["completed"]["external_path"].startswith(f"file:{checkpoints}/chk-")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert job_state(flink, job_id) == "FINISHED"  # stopped with a savepoint, not cancelled
    [savepoint] = [
        d for d in (tmp_path / "savepoints").glob("savepoint-*") if (d / "_metadata").is_file()
    ]

    # A new run (its own work dir: nothing recorded, no earlier jobs) lists savepoint_path.
    rerun = step.model_copy(update={"until": timedelta(seconds=3)})
    ctx2, beats2 = make_ctx(tmp_path / "second")
    ctx2 = dataclasses.replace(ctx2, source_dir=tick_jar.parent)
    result = await execute_step({"flink": executor}, rerun, ctx2)
    [job2] = result.outputs["job_ids"]
    assert job2 != job_id and result.outputs["state"] == "STOPPED"
    assert result.outputs["restored_from"] == str(savepoint)
    restored = restored_from(flink, job2)
    assert restored["is_savepoint"] and restored["external_path"].endswith(str(savepoint))
    assert any(b.get("restored_from") for b in beats2.details)
    assert job_state(flink, job2) == "FINISHED"


async def test_a_failed_streaming_jar_job_resumes_from_its_checkpoint_within_the_steps_until(
    flink: LocalFlinkCluster, tick_jar: Path, tmp_path: Path
) -> None:
    """Attempt 1's job fails at element 40 (after a few checkpoints); attempt 2 starts the job
    from the latest of them, and `until` counts from the step's first start (what the workflow
    passes each attempt), not from attempt 2's."""
    until = timedelta(seconds=20)
    step = tick_step(tmp_path, "100", str(tmp_path / "failed-once"), "40", until=until)
    executor = FlinkExecutor(FlinkOptions(rest_url=flink.rest_url, poll_interval=0.3))
    step_started = datetime.now(UTC)
    ctx1, _ = make_ctx(tmp_path)
    ctx1 = dataclasses.replace(ctx1, source_dir=tick_jar.parent, step_started_at=step_started)
    with pytest.raises(StepError) as failure:
        await execute_step({"flink": executor}, step, ctx1)
    assert "java.lang.IllegalStateException: tick job failed at 40" in failure.value.message
    assert "a retry restarts the job from checkpoint" in failure.value.message
    [job1] = (ctx1.work_dir / "flink-jobs.txt").read_text().split()
    first_checkpoint = httpx.get(f"{flink.rest_url}/jobs/{job1}/checkpoints").json()
    checkpoint = first_checkpoint["latest"]["completed"]

    ctx2, _ = make_ctx(tmp_path, attempt=2)
    ctx2 = dataclasses.replace(ctx2, source_dir=tick_jar.parent, step_started_at=step_started)
    attempt2_started = datetime.now(UTC)
    result = await execute_step({"flink": executor}, step, ctx2)
    [job2] = result.outputs["job_ids"]
    restored = restored_from(flink, job2)
    assert restored["id"] == checkpoint["id"]
    assert restored["external_path"] == checkpoint["external_path"]
    assert result.outputs["state"] == "STOPPED" and result.outputs["savepoint"]
    log = (ctx2.work_dir / "step.log").read_text()
    assert f"attempt 2: starting from checkpoint {checkpoint['id']} of job {job1}" in log
    # The watch got what was left of `until` when attempt 2 began watching, not all of it.
    [left] = [
        float(line.split("until: ")[1].split("s left")[0])
        for line in log.splitlines()
        if "s left of" in line
    ]
    spent = (attempt2_started - step_started).total_seconds()
    assert left <= until.total_seconds() - spent + 1


async def test_a_streaming_step_that_times_out_stops_within_the_workflows_stop_grace(
    flink: LocalFlinkCluster, tick_jar: Path, client: Client, tmp_path: Path
) -> None:
    """The job sleeps a minute per element, so no savepoint can complete. At the step's timeout
    the activity waits for the savepoint only as long as the workflow's stop grace allows, then
    cancels the job: the attempt ends with the step's own timeout error (not Temporal's
    start-to-close timeout, while the job would still run), and the job is gone."""
    definition = validate_pipeline(
        {
            "name": "stream_timeout",
            "steps": [tick_doc(tmp_path, "60000", timeout="10s")],
        },
        source_dir=tick_jar.parent,
    )
    moment = datetime(2026, 1, 31, tzinfo=UTC)
    context = RunContext.manual("stream_timeout", f"test/st/{uuid.uuid4()}", moment, {})
    run = RunInput(pipeline=definition, context=context, source_dir=str(tick_jar.parent))
    queue = f"flink-{uuid.uuid4()}"
    engine = DuckDBEngine(tmp_path / "warehouse.duckdb")
    work_root = tmp_path / "work"
    options = FlinkOptions(rest_url=flink.rest_url, poll_interval=0.3)
    try:
        async with build_worker(
            client, task_queue=queue, engine=engine, work_root=work_root, flink=options
        ):
            with pytest.raises(WorkflowFailureError) as failure:
                await client.execute_workflow(
                    PipelineRunWorkflow.run, run, id=context.run_id, task_queue=queue
                )
    finally:
        engine.close()
    summary = RunSummary.model_validate(failure.value.cause.details[0])  # type: ignore[union-attr]
    [state] = summary.steps
    assert state.status == "FAILED"
    assert (state.error, state.error_type) == ("step timed out after 10s", "Timeout")
    work_dir = work_root / run_dir_name(context.run_id) / "agg"
    [job_id] = (work_dir / "flink-jobs.txt").read_text().split()
    await wait_for(lambda: job_state(flink, job_id) == "CANCELED", 30, "the job to be cancelled")
    log = (work_dir / "step.log").read_text()
    assert f"stopping job {job_id} with a savepoint failed (savepoint of job" in log
    assert "not done after" in log
