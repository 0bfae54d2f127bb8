"""The spark-submit command of a Spark step: where it runs (settings) and what it runs (step).

Pure functions of the step, the options and the paths, so the Kubernetes form is tested without
a cluster. The embedded default is `local[N]` with the Spark that the `pyspark` package ships.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.pipeline import SparkStep
from schemas.run import RunContext, UpstreamResult
from schemas.sql_templates import render_sql
from schemas.templating import render_text
from steps.base import StepError, confined_path
from steps.sql_split import split_statements

SQL_DRIVER = Path(__file__).with_name("spark_sql_driver.py")
SQL_JOB_NAME = "spark_sql_job.json"
TAG_CONF = "spark.laminar.step"
_LOCAL_MASTER = re.compile(r"^local(\[(\d+|\*)(,\d+)?\])?$")
_POD_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


class KubernetesOptions(BaseModel):
    """Spark on Kubernetes (cluster deploy mode): the platform's choices, never a step's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = "default"
    image: str
    service_account: str | None = None
    driver_pod_template: str | None = None
    executor_pod_template: str | None = None
    upload_path: str | None = None
    """Where spark-submit uploads local files (the application, the SQL job) for the driver."""


class SparkOptions(BaseModel):
    """Where Spark steps run. `master`: `local[N]` (embedded) or `k8s://https://host:port`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    master: str = "local[2]"
    spark_home: Path | None = None
    """Default: the Spark distribution inside the installed `pyspark` package."""
    python: str = sys.executable
    """The driver's and executors' Python in local mode (PYSPARK_PYTHON)."""
    kubernetes: KubernetesOptions | None = None
    conf: dict[str, str] = Field(default_factory=dict)
    """Site-wide Spark properties, applied before a step's own `conf`."""
    terminate_grace: float = 5.0

    @property
    def is_local(self) -> bool:
        return bool(_LOCAL_MASTER.match(self.master))

    @property
    def is_kubernetes(self) -> bool:
        return self.master.startswith("k8s://")


def spark_home(options: SparkOptions) -> Path:
    if options.spark_home is not None:
        return options.spark_home
    spec = importlib.util.find_spec("pyspark")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise StepError(
            "Spark is not installed: the pyspark package is missing",
            error_type="SparkNotInstalled",
            retryable=False,
        )
    return Path(spec.origin).parent


def driver_pod_prefix(run: RunContext, step_id: str, tag: str) -> str:
    """Driver pods are named `<prefix>-<attempt>`, so a retry or a cancel finds them."""
    step = _POD_NAME_UNSAFE.sub("-", step_id.lower()).strip("-")[:20] or "step"
    return f"laminar-{step}-{tag[:12]}"


def write_sql_job(
    step: SparkStep,
    run: RunContext,
    work_dir: Path,
    upstream: Mapping[str, UpstreamResult] | None = None,
) -> Path:
    """The SQL driver's input: statements with `:lam_N` markers and typed parameter values."""
    assert step.sql is not None
    text, values = render_sql(step.sql, run, upstream)
    if values:  # DuckDB's `$name` placeholders become Spark's named parameter markers
        names = "|".join(map(re.escape, values))
        text = re.sub(rf"\$({names})\b", r":\1", text)
    params = {name: _typed(value) for name, value in values.items()}
    path = work_dir / SQL_JOB_NAME
    job = {"statements": split_statements(text, "spark"), "params": params}
    path.write_text(json.dumps(job, indent=2) + "\n")
    return path


def _typed(value: Any) -> dict[str, Any]:
    # JSON has no dates: the driver rebuilds them so Spark binds DATE/TIMESTAMP, not strings.
    kind = type(value).__name__
    if kind in ("date", "datetime"):
        return {"type": kind, "value": value.isoformat()}
    return {"type": "json", "value": value}


def submit_command(
    step: SparkStep,
    options: SparkOptions,
    *,
    run: RunContext,
    step_id: str,
    attempt: int,
    tag: str,
    source_dir: Path,
    work_dir: Path,
    sql_job: Path | None = None,
    upstream: Mapping[str, UpstreamResult] | None = None,
) -> list[str]:
    """The full spark-submit argv for one attempt of `step`."""
    root = source_dir.resolve()
    argv = [str(spark_home(options) / "bin" / "spark-submit"), "--master", options.master]
    argv += ["--name", f"laminar-{run.pipeline}-{step_id}"]
    conf: dict[str, str] = {}
    if options.is_local:
        # The UI on a free loopback port (SPARK_LOCAL_IP), for progress from its REST API;
        # no console progress bar in the log; scratch space inside the step's directory.
        conf["spark.ui.port"] = "0"
        conf["spark.ui.showConsoleProgress"] = "false"
        conf["spark.local.dir"] = str(work_dir / "spark-local")
        conf["spark.sql.warehouse.dir"] = str(work_dir / "spark-warehouse")
    conf.update(options.conf)
    conf.update(step.conf)
    conf[TAG_CONF] = tag
    if options.is_kubernetes:
        argv += ["--deploy-mode", "cluster"]
        conf.update(_kubernetes_conf(options, run, step_id, attempt, tag))
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    if step.driver_memory:
        argv += ["--driver-memory", step.driver_memory]
    if step.executor_memory:
        argv += ["--executor-memory", step.executor_memory]
    if step.executor_cores:
        argv += ["--executor-cores", str(step.executor_cores)]
    if step.num_executors:
        argv += ["--num-executors", str(step.num_executors)]
    if step.packages:
        argv += ["--packages", ",".join(step.packages)]
    if step.jars:
        argv += ["--jars", ",".join(str(confined_path(root, jar, "jar")) for jar in step.jars)]
    if step.sql is not None:
        if sql_job is None:
            raise ValueError("a sql step needs its job file")
        # --files ships the job beside the driver in every deploy mode (SparkFiles.get).
        return [*argv, "--files", str(sql_job), str(SQL_DRIVER), sql_job.name]
    assert step.application is not None
    application = confined_path(root, render_text(step.application, run, upstream), "application")
    if step.main_class:
        argv += ["--class", step.main_class]
    return [*argv, str(application), *(render_text(arg, run, upstream) for arg in step.args)]


def kill_command(options: SparkOptions, pod_prefix: str) -> list[str] | None:
    """spark-submit's own way to stop a cluster-mode driver (all attempts: a glob)."""
    if not options.is_kubernetes or options.kubernetes is None:
        return None
    home = spark_home(options)
    target = f"{options.kubernetes.namespace}:{pod_prefix}-*"
    return [str(home / "bin" / "spark-submit"), "--master", options.master, "--kill", target]


def _kubernetes_conf(
    options: SparkOptions, run: RunContext, step_id: str, attempt: int, tag: str
) -> dict[str, str]:
    k8s = options.kubernetes
    if k8s is None:
        raise StepError(
            f"master {options.master} needs Kubernetes settings (namespace, image)",
            error_type="SparkSettingsError",
            retryable=False,
        )
    conf = {
        "spark.kubernetes.namespace": k8s.namespace,
        "spark.kubernetes.container.image": k8s.image,
        # A per-attempt name: the previous attempt's (finished) pod may still exist.
        "spark.kubernetes.driver.pod.name": f"{driver_pod_prefix(run, step_id, tag)}-{attempt}",
        "spark.kubernetes.driver.label.laminar/step": tag,
        "spark.kubernetes.executor.label.laminar/step": tag,
        "spark.kubernetes.submission.waitAppCompletion": "true",
    }
    if k8s.service_account:
        conf["spark.kubernetes.authenticate.driver.serviceAccountName"] = k8s.service_account
    if k8s.driver_pod_template:
        conf["spark.kubernetes.driver.podTemplateFile"] = k8s.driver_pod_template
    if k8s.executor_pod_template:
        conf["spark.kubernetes.executor.podTemplateFile"] = k8s.executor_pod_template
    if k8s.upload_path:
        conf["spark.kubernetes.file.upload.path"] = k8s.upload_path
    return conf
