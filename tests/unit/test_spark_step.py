"""Spark steps without a JVM: definitions, the spark-submit command (local and Kubernetes),
the SQL job file, progress and error extraction from driver output, progress heartbeats."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.steps import StepActivities
from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import NoopStep, SparkStep
from schemas.run import RunContext, RunStepInput, StepResult
from steps.base import StepContext, StepError, step_tag
from steps.driver_output import exception_lines
from steps.spark_output import SparkProgress, is_deterministic
from steps.spark_rest import rest_progress
from steps.spark_submit import (
    SQL_DRIVER,
    KubernetesOptions,
    SparkOptions,
    kill_command,
    spark_home,
    submit_command,
    write_sql_job,
)
from steps.sql_split import split_statements

RUN = RunContext.manual(
    "sales", "default/sales/2026-01-31", datetime(2026, 1, 31, tzinfo=UTC), {"region": "EU"}
)


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline"
    (path / "jobs").mkdir(parents=True)
    (path / "jobs" / "agg.py").write_text("print('agg')\n")
    (path / "jobs" / "app.jar").write_bytes(b"PK")
    (tmp_path / "outside.py").write_text("")
    return path


def problems(step: dict[str, Any], source_dir: Path, **top: Any) -> list[str]:
    doc = {"name": "p", **top, "steps": [{"id": "s", "type": "spark", **step}]}
    with pytest.raises(PipelineValidationError) as info:
        validate_pipeline(doc, source_dir=source_dir)
    return [str(p) for p in info.value.problems]


# --- definitions ------------------------------------------------------------------------------


def test_valid_spark_steps_load(source_dir: Path) -> None:
    doc = {
        "name": "p",
        "params": {"region": "EU"},
        "steps": [
            {
                "id": "agg",
                "type": "spark",
                "application": "jobs/agg.py",
                "args": ["--day", "{{ ds }}", "--region={{ params.region }}"],
                "conf": {"spark.sql.shuffle.partitions": "4"},
                "driver_memory": "1g",
                "executor_memory": "2g",
                "executor_cores": 2,
                "num_executors": 3,
                "packages": ["org.apache.spark:spark-avro_2.13:4.0.0"],
                "jars": ["jobs/app.jar"],
            },
            {"id": "jar", "type": "spark", "application": "jobs/app.jar", "main_class": "a.B"},
            {"id": "q", "type": "spark", "sql": "SELECT {{ params.region }} AS r; SELECT 1"},
        ],
    }
    pipeline = validate_pipeline(doc, source_dir=source_dir)
    agg = pipeline.steps[0]
    assert isinstance(agg, SparkStep) and agg.executor_cores == 2


@pytest.mark.parametrize(
    ("step", "path", "phrase"),
    [
        ({}, "steps[0]", "exactly one of 'application'"),
        ({"application": "jobs/agg.py", "sql": "SELECT 1"}, "steps[0]", "exactly one of"),
        ({"application": "jobs/app.jar"}, "steps[0]", "needs 'main_class'"),
        ({"application": "jobs/agg.py", "main_class": "a.B"}, "steps[0]", "only to a jar"),
        ({"application": "jobs/agg.txt"}, "steps[0]", "must be a .py file or a .jar"),
        ({"sql": "SELECT 1", "args": ["x"]}, "steps[0]", "takes none"),
        ({"application": "../outside.py"}, "steps[0].application", "escapes the pipeline"),
        ({"application": "/etc/x.py"}, "steps[0].application", "relative to the pipeline"),
        ({"application": "jobs/nope.py"}, "steps[0].application", "no such file"),
        (
            {"application": "jobs/agg.py", "jars": ["../outside.py"]},
            "steps[0].jars[0]",
            "escapes",
        ),
        (
            {"application": "jobs/agg.py", "conf": {"spark.master": "local[64]"}},
            'steps[0].conf["spark.master"]',
            "set by Laminar",
        ),
        (
            {"application": "jobs/agg.py", "conf": {"spark.kubernetes.namespace": "other"}},
            'steps[0].conf["spark.kubernetes.namespace"]',
            "set by Laminar",
        ),
        (
            {"application": "jobs/agg.py", "conf": {"memory": "1g"}},
            "steps[0].conf.memory",
            "not a Spark property",
        ),
        ({"application": "jobs/agg.py", "driver_memory": "lots"}, "steps[0].driver_memory", "512m"),
        (
            {"application": "jobs/agg.py", "packages": ["just-a-name"]},
            "steps[0].packages[0]",
            "group:artifact:version",
        ),
        (
            {"application": "jobs/agg.py", "executor_cores": 0},
            "steps[0].executor_cores",
            "greater than or equal to 1",
        ),
        ({"application": "jobs/agg.py", "args": ["{{ params.nope }}"]}, "steps[0].args[0]", "nope"),
        ({"sql": "SELECT * FROM"}, "steps[0].sql", "does not parse"),
        ({"sql": "SELECT {{ params.nope }}"}, "steps[0].sql", "unknown param 'nope'"),
    ],
)
def test_invalid_spark_steps_are_reported_with_paths(
    source_dir: Path, step: dict[str, Any], path: str, phrase: str
) -> None:
    found = problems(step, source_dir)
    assert any(p.startswith(f"{path}: ") and phrase in p for p in found), found


def test_unknown_field_on_a_spark_step_suggests_the_right_one(source_dir: Path) -> None:
    found = problems({"application": "jobs/agg.py", "driver_mem": "1g"}, source_dir)
    assert any(p.startswith("steps[0].driver_mem: unknown field") for p in found), found
    assert any("driver_memory" in p for p in found), found


# --- the spark-submit command -----------------------------------------------------------------


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_local_command_runs_the_application_from_the_pyspark_package(
    source_dir: Path, tmp_path: Path
) -> None:
    step = SparkStep(
        id="agg",
        type="spark",
        application="jobs/agg.py",
        args=["--day", "{{ ds }}", "--region={{ params.region }}"],
        conf={"spark.sql.shuffle.partitions": "4"},
        driver_memory="1g",
        packages=["org.example:lib:1.0"],
        jars=["jobs/app.jar"],
    )
    work = tmp_path / "work"
    argv = submit_command(
        step,
        SparkOptions(conf={"spark.eventLog.enabled": "false"}),
        run=RUN,
        step_id="agg",
        attempt=1,
        tag="t123",
        source_dir=source_dir,
        work_dir=work,
    )
    home = spark_home(SparkOptions())
    assert (home / "bin" / "spark-submit").is_file()
    assert argv[0] == str(home / "bin" / "spark-submit")
    assert _pairs(argv, "--master") == ["local[2]"]
    assert "--deploy-mode" not in argv
    conf = _pairs(argv, "--conf")
    assert "spark.laminar.step=t123" in conf
    assert "spark.sql.shuffle.partitions=4" in conf
    assert "spark.eventLog.enabled=false" in conf
    assert "spark.ui.port=0" in conf  # a free port: progress comes from its REST API
    assert f"spark.local.dir={work / 'spark-local'}" in conf
    assert _pairs(argv, "--driver-memory") == ["1g"]
    assert _pairs(argv, "--packages") == ["org.example:lib:1.0"]
    assert _pairs(argv, "--jars") == [str(source_dir.resolve() / "jobs" / "app.jar")]
    assert argv[-4:] == [
        str(source_dir.resolve() / "jobs" / "agg.py"),
        "--day",
        "2026-01-31",
        "--region=EU",
    ]


def test_a_jar_runs_its_main_class(source_dir: Path, tmp_path: Path) -> None:
    step = SparkStep(
        id="j", type="spark", application="jobs/app.jar", main_class="com.acme.Job", args=["x"]
    )
    argv = submit_command(
        step,
        SparkOptions(),
        run=RUN,
        step_id="j",
        attempt=1,
        tag="t",
        source_dir=source_dir,
        work_dir=tmp_path,
    )
    assert argv[-4:] == ["--class", "com.acme.Job", str(source_dir.resolve() / "jobs/app.jar"), "x"]


def test_an_application_path_templated_out_of_the_pipeline_dir_is_refused(
    source_dir: Path, tmp_path: Path
) -> None:
    step = SparkStep(id="a", type="spark", application="{{ params.region }}/../../outside.py")
    run = RUN.model_copy(update={"params": {"region": "jobs"}})
    with pytest.raises(StepError) as info:
        submit_command(
            step,
            SparkOptions(),
            run=run,
            step_id="a",
            attempt=1,
            tag="t",
            source_dir=source_dir,
            work_dir=tmp_path,
        )
    assert info.value.error_type == "ScriptPathError" and not info.value.retryable


K8S = SparkOptions(
    master="k8s://https://k8s.example:6443",
    kubernetes=KubernetesOptions(
        namespace="tenant-a",
        image="registry.example/spark:4.0",
        service_account="spark-driver",
        driver_pod_template="/etc/laminar/driver.yaml",
        executor_pod_template="/etc/laminar/executor.yaml",
        upload_path="s3a://bucket/uploads",
    ),
)


def test_kubernetes_command_is_cluster_mode_with_the_platform_settings(
    source_dir: Path, tmp_path: Path
) -> None:
    step = SparkStep(id="Agg_Step", type="spark", application="jobs/agg.py")
    tag = step_tag("default/sales/2026-01-31/Agg_Step")
    argv = submit_command(
        step,
        K8S,
        run=RUN,
        step_id="Agg_Step",
        attempt=3,
        tag=tag,
        source_dir=source_dir,
        work_dir=tmp_path,
    )
    assert _pairs(argv, "--master") == ["k8s://https://k8s.example:6443"]
    assert _pairs(argv, "--deploy-mode") == ["cluster"]
    conf = dict(c.split("=", 1) for c in _pairs(argv, "--conf"))
    assert conf["spark.kubernetes.namespace"] == "tenant-a"
    assert conf["spark.kubernetes.container.image"] == "registry.example/spark:4.0"
    assert conf["spark.kubernetes.authenticate.driver.serviceAccountName"] == "spark-driver"
    assert conf["spark.kubernetes.driver.podTemplateFile"] == "/etc/laminar/driver.yaml"
    assert conf["spark.kubernetes.executor.podTemplateFile"] == "/etc/laminar/executor.yaml"
    assert conf["spark.kubernetes.file.upload.path"] == "s3a://bucket/uploads"
    assert conf["spark.kubernetes.driver.label.laminar/step"] == tag
    # One driver pod name per attempt, sharing a prefix that cancel and retries target.
    pod = conf["spark.kubernetes.driver.pod.name"]
    assert pod == f"laminar-agg-step-{tag[:12]}-3"
    assert len(pod) <= 63
    # Local-mode defaults (no UI, local scratch dirs) do not leak into cluster mode.
    assert "spark.ui.enabled" not in conf and "spark.local.dir" not in conf
    kill = kill_command(K8S, pod.rsplit("-", 1)[0])
    assert kill is not None
    assert kill[1:] == [
        "--master",
        "k8s://https://k8s.example:6443",
        "--kill",
        f"tenant-a:laminar-agg-step-{tag[:12]}-*",
    ]
    assert kill_command(SparkOptions(), "x") is None


def test_kubernetes_master_without_kubernetes_settings_is_a_clear_error(
    source_dir: Path, tmp_path: Path
) -> None:
    step = SparkStep(id="a", type="spark", application="jobs/agg.py")
    with pytest.raises(StepError, match="needs Kubernetes settings"):
        submit_command(
            step,
            SparkOptions(master="k8s://https://x:443"),
            run=RUN,
            step_id="a",
            attempt=1,
            tag="t",
            source_dir=source_dir,
            work_dir=tmp_path,
        )


def test_sql_job_binds_template_values_as_spark_parameters(
    source_dir: Path, tmp_path: Path
) -> None:
    sql = (
        "CREATE TABLE t AS SELECT {{ params.region }} AS region, {{ logical_date }} AS at;\n"
        "SELECT ';' AS semi, * FROM t WHERE region = {{ params.region }}; -- done;\n"
    )
    step = SparkStep(id="q", type="spark", sql=sql)
    run = RUN.model_copy(update={"params": {"region": "EU'; DROP TABLE t; --"}})
    job_path = write_sql_job(step, run, tmp_path)
    job = json.loads(job_path.read_text())
    assert job["statements"] == [
        "CREATE TABLE t AS SELECT :lam_0 AS region, :lam_1 AS at",
        "SELECT ';' AS semi, * FROM t WHERE region = :lam_2",
    ]
    assert job["params"]["lam_0"] == {"type": "json", "value": "EU'; DROP TABLE t; --"}
    assert job["params"]["lam_1"] == {"type": "datetime", "value": "2026-01-31T00:00:00+00:00"}
    argv = submit_command(
        step,
        SparkOptions(),
        run=run,
        step_id="q",
        attempt=1,
        tag="t",
        source_dir=source_dir,
        work_dir=tmp_path,
        sql_job=job_path,
    )
    assert argv[-4:] == ["--files", str(job_path), str(SQL_DRIVER), job_path.name]


def test_split_statements_keeps_semicolons_inside_literals_and_comments() -> None:
    statements = split_statements("SELECT 'a;b'; ;SELECT 2 -- x;\n", "spark")
    assert statements == ["SELECT 'a;b'", "SELECT 2 -- x;"]
    assert split_statements("SELECT 1; -- trailing;\n", "spark") == ["SELECT 1"]
    assert split_statements("  ", "spark") == []


# --- reading the driver's output --------------------------------------------------------------

DRIVER_LOG = """\
26/11/24 12:30:55 INFO DAGScheduler: Got map stage job 0 (collect at app.py:4) with 2 output partitions
26/11/24 12:30:55 INFO DAGScheduler: Submitting 2 missing tasks from ShuffleMapStage 0 (MapPartitionsRDD[3] at collect at app.py:4) (first 15 tasks are for partitions Vector(0, 1))
26/11/24 12:30:56 INFO TaskSetManager: Finished task 1.0 in stage 0.0 (TID 1) in 474 ms on 192.0.2.2 (executor driver) (1/2)
26/11/24 12:30:56 INFO TaskSetManager: Finished task 0.0 in stage 0.0 (TID 0) in 499 ms on 192.0.2.2 (executor driver) (2/2)
26/11/24 12:30:56 INFO DAGScheduler: ShuffleMapStage 0 (collect at app.py:4) finished in 700 ms
26/11/24 12:30:56 INFO DAGScheduler: Got job 1 (collect at app.py:4) with 1 output partitions
26/11/24 12:30:56 INFO DAGScheduler: Submitting 3 missing tasks from ResultStage 2 (MapPartitionsRDD[6] at collect at app.py:4) (first 15 tasks are for partitions Vector(0))
26/11/24 12:30:56 INFO TaskSetManager: Finished task 0.0 in stage 2.0 (TID 2) in 96 ms on 192.0.2.2 (executor driver) (1/3)
"""  # noqa: E501


def test_progress_follows_jobs_stages_and_tasks() -> None:
    progress = SparkProgress()
    changed = [progress.feed(line) for line in DRIVER_LOG.splitlines()]
    assert all(changed)
    assert progress.details() == {
        "jobs": "0/2",
        "stages": "1/2",
        "running_stage": 2,
        "tasks": "1/3",
    }
    progress.feed("26/11/24 12:30:56 INFO DAGScheduler: ResultStage 2 (collect) finished in 9 ms")
    progress.feed("26/11/24 12:30:56 INFO DAGScheduler: Job 1 finished: collect, took 132 ms")
    progress.feed("laminar: statement 2/3")
    assert progress.details() == {"jobs": "1/2", "stages": "2/2", "statement": "2/3"}
    assert progress.summary() == {"jobs": 1, "stages": 2}
    assert not progress.feed("26/11/24 12:30:56 INFO BlockManager: stopped")


def test_exception_lines_pick_python_and_java_exceptions_root_cause_last() -> None:
    log = """\
26/11/24 12:34:31 ERROR Executor: Exception in task 0.0 in stage 0.0 (TID 0)
Traceback (most recent call last):
  File "/x/app.py", line 4, in f
    raise ValueError("bad row %d" % x)
ValueError: bad row 0
\tat org.apache.spark.api.python.BasePythonRunner.handle(PythonRunner.scala:1097)
ValueError: bad row 0
Exception in thread "main" org.apache.spark.SparkException: Job aborted
Caused by: java.lang.IllegalStateException: root cause here
"""
    assert exception_lines(log) == [
        "ValueError: bad row 0",
        'Exception in thread "main" org.apache.spark.SparkException: Job aborted',
        "java.lang.IllegalStateException: root cause here",
    ]
    assert not is_deterministic(exception_lines(log))
    analysis = "pyspark.errors.exceptions.captured.AnalysisException: [TABLE_OR_VIEW_NOT_FOUND] x"
    assert is_deterministic(exception_lines(analysis))
    assert exception_lines("26/11/24 12:00:00 ERROR SparkContext: Error initializing") == []


# --- progress details survive the activity's own heartbeats -----------------------------------


class _ReportsOnce:
    async def execute(self, step: NoopStep, ctx: StepContext) -> StepResult:
        ctx.heartbeat({"stages": "1/4"})
        await asyncio.sleep(1.2)
        return StepResult()


async def test_periodic_heartbeats_repeat_the_latest_progress(tmp_path: Path) -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=1.5))
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    activities = StepActivities({"noop": _ReportsOnce()}, tmp_path / "work")
    step_input = RunStepInput(
        step=NoopStep(id="n", type="noop"), context=RUN, source_dir=str(tmp_path)
    )
    await env.run(activities.run_step, step_input)
    assert len(beats) >= 3  # the report, then the periodic beats every 0.5 s
    assert all(beat == ({"stages": "1/4"},) for beat in beats), beats


def test_progress_comes_from_the_drivers_rest_api_once_it_answers() -> None:
    progress = SparkProgress()
    assert not progress.feed("26/11/24 INFO JettyUtils: Start Jetty 127.0.0.1:0 for SparkUI")
    progress.feed("26/11/24 INFO Utils: Successfully started service 'SparkUI' on port 35757.")
    assert progress.ui_port == 35757
    progress.feed("26/11/24 INFO DAGScheduler: Got job 0 (collect at x.py:3) with 4 partitions")
    progress.feed("laminar: statement 2/3")
    assert progress.details()["jobs"] == "0/1" and "source" not in progress.details()
    jobs = [{"jobId": 1, "status": "RUNNING"}, {"jobId": 0, "status": "SUCCEEDED"}]
    stages = [
        {"stageId": 0, "attemptId": 0, "status": "COMPLETE", "numTasks": 4, "numCompleteTasks": 4},
        {"stageId": 1, "attemptId": 0, "status": "SKIPPED", "numTasks": 4},
        {"stageId": 2, "attemptId": 0, "status": "FAILED", "numTasks": 2, "numFailedTasks": 1},
        {"stageId": 2, "attemptId": 1, "status": "ACTIVE", "numTasks": 2, "numCompleteTasks": 1},
        {"stageId": 3, "attemptId": 0, "status": "PENDING", "numTasks": 8},
    ]
    progress.rest = rest_progress(jobs, stages)
    assert progress.details() == {
        "jobs": "1/2",
        "stages": "1/3",  # stage 1 was skipped; stage 2 counts once, by its newest attempt
        "source": "spark-rest",
        "running_stage": 2,
        "tasks": "1/2",
        "statement": "2/3",
    }
