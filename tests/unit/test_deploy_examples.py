"""examples/deploy/ validated offline: the Kubernetes manifests against the Kubernetes API
schemas (kubernetes-validate; no cluster here), the Cloud Run, Fargate and Fly.io files by
structure. Across all of them: the laminar arguments parse with the real CLI, every LAMINAR_
variable is one Laminar knows, the state is on an object store, and no credential is inline."""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.main import get_command

from pipeline_service.commands import app
from pipeline_service.settings import unknown_env_warnings
from pipeline_service.storage.store import is_url

DEPLOY = Path(__file__).resolve().parents[2] / "examples" / "deploy"
REPO = DEPLOY.parents[1]


def check_laminar(args: list[str], env: dict[str, str]) -> None:
    """What a container would run: parses with `laminar`'s own CLI, names a file that exists,
    keeps state off the local disk, and sets only known LAMINAR_ variables, no secrets."""
    assert args[0] == "run", args
    group: Any = get_command(app)
    command = group.get_command(group.context_class(group), "run")
    assert command is not None
    context = command.make_context("run", list(args[1:]))  # raises on an unknown option
    pipeline = context.params["pipeline"]
    assert (REPO / pipeline).is_file(), pipeline
    assert unknown_env_warnings(env) == []
    state = env.get("LAMINAR_STATE_DIR") or env.get("LAMINAR_CHECKPOINT_URL")
    assert state is not None and is_url(state), env
    assert not any("SECRET" in name or "PASSWORD" in name for name in env), env


def k8s_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return list(spec["template"]["spec"]["containers"])


def test_kubernetes_job_and_cronjob_match_the_api_schemas() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes-job.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Job", "CronJob"]
    for doc in docs:
        kubernetes_validate.validate(doc, desired_version="1.30", strict=True)
    for doc in docs[1:]:
        for container in k8s_containers(doc):
            env = {e["name"]: e["value"] for e in container["env"]}
            check_laminar(container["args"], env)


def test_kubernetes_validation_catches_a_broken_manifest() -> None:
    """The schema check is real: a misspelt field fails it."""
    job = list(yaml.safe_load_all((DEPLOY / "kubernetes-job.yaml").read_text()))[1]
    job["spec"]["backofLimit"] = job["spec"].pop("backoffLimit")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, desired_version="1.30", strict=True)
    env = {"LAMINAR_STATE_DIR": "s3://b/p"}
    with pytest.raises(Exception, match="No such option: --bogus"):
        check_laminar(["run", "--once", "examples/hello.yaml", "--bogus"], env)
    with pytest.raises(AssertionError):
        check_laminar(["run", "examples/hello.yaml"], {**env, "LAMINAR_STAT_DIR": "x"})


def test_cloud_run_job() -> None:
    job = yaml.safe_load((DEPLOY / "cloud-run-job.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("run.googleapis.com/v1", "Job")
    task = job["spec"]["template"]["spec"]["template"]["spec"]
    assert task["serviceAccountName"].endswith(".iam.gserviceaccount.com")
    [container] = task["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LAMINAR_STATE_DIR"].startswith("gs://")
    check_laminar(container["args"], env)


def test_fargate_task_definition() -> None:
    task = json.loads((DEPLOY / "fargate-task-definition.json").read_text())
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    # Fargate's valid CPU/memory pairs for 1 vCPU: 2-8 GB.
    assert task["cpu"] == "1024" and 2048 <= int(task["memory"]) <= 8192
    assert task["taskRoleArn"].startswith("arn:aws:iam::")  # credentials: the task role
    [container] = task["containerDefinitions"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert {"LAMINAR_CHECKPOINT_URL", "LAMINAR_PIPELINE_NAME", "LAMINAR_PARALLELISM"} <= set(env)
    check_laminar(container["command"], env)


def test_fly_machine_config() -> None:
    config = tomllib.loads((DEPLOY / "fly.toml").read_text())
    assert set(config["build"]) == {"image"}, config["build"]  # built from deploy/Dockerfile
    command = shlex.split(config["processes"]["run"])
    assert command[0] == "laminar"
    assert config["vm"][0]["processes"] == ["run"]
    check_laminar(command[1:], config["env"])


def test_the_examples_run_the_platform_image() -> None:
    """One image for everything: the examples name deploy/Dockerfile's `laminar` target, whose
    working dir holds the pipelines they run, and whose environment sets no `laminar run`
    setting (LAMINAR_HTTP_PORT there would make every example serve the API too)."""
    from pipeline_service.settings import RunSettings
    from tests.deploy.files import dockerfile_stages, image_env

    assert not (DEPLOY / "Dockerfile").exists()
    for name in ("kubernetes-job.yaml", "cloud-run-job.yaml", "fly.toml"):
        text = " ".join((DEPLOY / name).read_text().split())
        assert "docker build -f deploy/Dockerfile --target laminar" in text, name
    stages = dockerfile_stages()
    laminar = stages["laminar"].instructions
    assert ("WORKDIR", "/app") in laminar
    assert any(kw == "COPY" and rest.endswith("examples /app/examples") for kw, rest in laminar)
    env = image_env(stages, "laminar")
    run_settings = {f"LAMINAR_{name.upper()}" for name in RunSettings.model_fields}
    assert not run_settings & set(env), sorted(run_settings & set(env))
    # The Kubernetes Job's working copy lives on its emptyDir: under the image's HOME.
    job = list(yaml.safe_load_all((DEPLOY / "kubernetes-job.yaml").read_text()))[1]
    [container] = k8s_containers(job)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["work"] == f"{env['HOME']}/.cache", mounts
