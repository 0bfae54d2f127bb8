"""Python steps as Kubernetes Jobs. No cluster exists here: the manifests are checked against
the Kubernetes API schemas (kubernetes-validate), and the follow / log / cancel / retry logic
runs against `RecordingApi`, a stand-in for the kubernetes client that records the calls."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest

from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import PythonStep, SecretRef
from schemas.run import RunContext
from steps.base import StepContext, StepError, step_tag
from steps.kubernetes_job import (
    LABEL,
    KubernetesJobExecutor,
    KubernetesJobOptions,
    manifests,
    owned_by,
)


class RecordingApi:
    """Stand-in for the kubernetes client (BatchV1Api + CoreV1Api): records every call and
    answers job status from a script of states."""

    def __init__(self, states: list[dict[str, int]], earlier: list[str] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.bodies: dict[str, dict[str, Any]] = {}
        self.states = states
        self.earlier = earlier or []

    def create_namespaced_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append(("create_config_map", body["metadata"]["name"]))

    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any:
        self.calls.append(("create_job", body["metadata"]["name"]))
        self.bodies["job"] = body
        return SimpleNamespace(metadata=SimpleNamespace(name=body["metadata"]["name"], uid=UID))

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append(("create_secret", body["metadata"]["name"]))
        self.bodies["secret"] = body

    def patch_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append(("patch_secret", (name, body)))

    def delete_namespaced_secret(self, name: str, namespace: str) -> None:
        self.calls.append(("delete_secret", name))

    def delete_collection_namespaced_secret(self, namespace: str, label_selector: str) -> None:
        self.calls.append(("delete_secrets", label_selector))

    def read_namespaced_job_status(self, name: str, namespace: str) -> Any:
        self.calls.append(("read_job_status", name))
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        # V1JobStatus: counts the API has not reported yet are None.
        counts = {"active": None, "succeeded": None, "failed": None, **state}
        return SimpleNamespace(status=SimpleNamespace(**counts))

    def list_namespaced_job(self, namespace: str, label_selector: str) -> Any:
        self.calls.append(("list_jobs", label_selector))
        return SimpleNamespace(
            items=[SimpleNamespace(metadata=SimpleNamespace(name=n)) for n in self.earlier]
        )

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str) -> None:
        self.calls.append(("delete_job", (name, propagation_policy)))

    def delete_namespaced_config_map(self, name: str, namespace: str) -> None:
        self.calls.append(("delete_config_map", name))

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        self.calls.append(("list_pods", label_selector))
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name="pod-1"))])

    def read_namespaced_pod_log(self, name: str, namespace: str) -> str:
        self.calls.append(("read_pod_log", name))
        return f"starting with token {PLANTED}\nValueError: no rows for 2026-01-31\n"


UID = "6d1f0e9a-0c1b-4b5e-9a3e-2f7d1c1e0b42"
PLANTED = "tok-3fa9-planted"


def make_ctx(
    tmp_path: Path, attempt: int = 1, secrets: dict[str, str] | None = None
) -> StepContext:
    moment = datetime(2026, 1, 31, tzinfo=UTC)
    (tmp_path / "job.py").write_text("print('hello from the pod')\n")
    return StepContext(
        run=RunContext.manual("p", "default/p/2026-01-31", moment, {"region": "EU"}),
        step_id="Load_EU",
        attempt=attempt,
        idempotency_key="default/p/2026-01-31/Load_EU",
        source_dir=tmp_path,
        work_dir=tmp_path / "work",
        secrets=secrets or {},
    )


STEP = PythonStep(
    id="Load_EU",
    type="python",
    script="job.py",
    args=["--region", "{{ params.region }}"],
    env={"MODE": "full"},
    runner="kubernetes",
    image="registry.example/etl:1.4",
    resources={"cpu": "500m", "memory": "512Mi"},
)
OPTIONS = KubernetesJobOptions(namespace="tenant-a", service_account="etl", poll_interval=0.01)


def test_manifests_are_valid_kubernetes_objects(tmp_path: Path) -> None:
    config_map, job, secret = manifests(STEP, make_ctx(tmp_path), OPTIONS)
    assert secret is None  # no secret env: no Secret object
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(config_map, version, strict=True)
    kubernetes_validate.validate(job, version, strict=True)
    tag = step_tag("default/p/2026-01-31/Load_EU")
    assert job["metadata"]["name"] == f"laminar-load-eu-{tag[:12]}-1"
    assert job["metadata"]["namespace"] == "tenant-a"
    assert job["metadata"]["labels"][LABEL] == tag
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 3600
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "etl" and pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["image"] == "registry.example/etl:1.4"
    assert container["args"] == ["--region", "EU"]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "MODE", "value": "full"} in container["env"]
    assert config_map["data"]["script.py"] == "print('hello from the pod')\n"


def test_a_manifest_with_a_bad_field_is_caught_by_the_schema_check(tmp_path: Path) -> None:
    _, job, _ = manifests(STEP, make_ctx(tmp_path), OPTIONS)
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = ["Always"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)


async def test_a_succeeding_job_is_followed_and_its_log_kept(tmp_path: Path) -> None:
    api = RecordingApi([{"active": 1}, {"active": 1}, {"succeeded": 1}])
    beats: list[Any] = []
    ctx = make_ctx(tmp_path)
    ctx = StepContext(**{**ctx.__dict__, "heartbeat": lambda *d: beats.append(d)})
    result = await KubernetesJobExecutor(api, OPTIONS).execute(STEP, ctx)
    name = result.outputs["job"].split("/")[1]
    kinds = [call[0] for call in api.calls]
    assert kinds[:4] == ["list_jobs", "delete_secrets", "create_config_map", "create_job"]
    assert "create_secret" not in kinds
    assert kinds.count("read_job_status") == 3
    assert ("list_pods", f"job-name={name}") in api.calls
    assert "no rows for" in Path(result.log_path or "").read_text()
    assert beats[-1] == ({"job": name, "active": 0, "succeeded": 1, "failed": 0},)


async def test_a_failed_job_fails_the_step_with_its_last_log_line(tmp_path: Path) -> None:
    api = RecordingApi([{"failed": 1}])
    with pytest.raises(StepError) as info:
        await KubernetesJobExecutor(api, OPTIONS).execute(STEP, make_ctx(tmp_path))
    assert info.value.error_type == "KubernetesJobFailed"
    assert "failed: ValueError: no rows for 2026-01-31" in info.value.message.splitlines()[0]


async def test_cancel_deletes_the_job_and_its_config_map(tmp_path: Path) -> None:
    api = RecordingApi([{"active": 1}])
    task = asyncio.create_task(
        KubernetesJobExecutor(api, OPTIONS).execute(STEP, make_ctx(tmp_path))
    )
    while not any(call[0] == "read_job_status" for call in api.calls):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    created = next(call[1] for call in api.calls if call[0] == "create_job")
    assert ("delete_job", (created, "Background")) in api.calls
    assert ("delete_config_map", created) in api.calls


SECRET_STEP = STEP.model_copy(
    update={"env": {"MODE": "full", "TOKEN": SecretRef(secret="warehouse_token")}}
)


def test_a_secret_env_variable_goes_into_a_secret_not_the_pod_spec(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, secrets={"warehouse_token": PLANTED})
    config_map, job, secret = manifests(SECRET_STEP, ctx, OPTIONS)
    assert secret is not None
    version = kubernetes_validate.latest_version()
    for body in (config_map, job, secret):
        kubernetes_validate.validate(body, version, strict=True)
    name = job["metadata"]["name"]
    assert secret["metadata"]["name"] == name and secret["metadata"]["namespace"] == "tenant-a"
    assert secret["metadata"]["labels"] == job["metadata"]["labels"]
    assert secret["stringData"] == {"TOKEN": PLANTED} and secret["immutable"] is True
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "TOKEN"}}} in (
        container["env"]
    )
    assert {"name": "MODE", "value": "full"} in container["env"]
    assert PLANTED not in json.dumps(job) and PLANTED not in json.dumps(config_map)
    owner = owned_by(job, UID)
    patched = {**secret, "metadata": {**secret["metadata"], **owner["metadata"]}}
    kubernetes_validate.validate(patched, version, strict=True)


async def test_the_attempts_secret_is_owned_by_its_job_and_deleted_when_it_ends(
    tmp_path: Path,
) -> None:
    api = RecordingApi([{"active": 1}, {"failed": 1}])
    ctx = make_ctx(tmp_path, secrets={"warehouse_token": PLANTED})
    with pytest.raises(StepError) as info:
        await KubernetesJobExecutor(api, OPTIONS).execute(SECRET_STEP, ctx)
    name = api.bodies["job"]["metadata"]["name"]
    kinds = [call[0] for call in api.calls]
    # The Secret exists before the Job (the pod reads it at start), then the Job owns it.
    assert kinds.index("create_secret") < kinds.index("create_job") < kinds.index("patch_secret")
    patch = next(call[1] for call in api.calls if call[0] == "patch_secret")
    assert patch == (
        name,
        {
            "metadata": {
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": UID}
                ]
            }
        },
    )
    # Deleted as the attempt ends (here: the Job failed), before anything else is read.
    assert kinds.index("delete_secret") < kinds.index("list_pods")
    assert ("delete_secret", name) in api.calls
    # The pod's log, copied to the step log, has the value masked; so has the error.
    log = (tmp_path / "work" / "step.log").read_text()
    assert "starting with token ***" in log and PLANTED not in log
    assert PLANTED not in info.value.message


async def test_cancel_deletes_the_attempts_secret_too(tmp_path: Path) -> None:
    api = RecordingApi([{"active": 1}])
    ctx = make_ctx(tmp_path, secrets={"warehouse_token": PLANTED})
    task = asyncio.create_task(KubernetesJobExecutor(api, OPTIONS).execute(SECRET_STEP, ctx))
    while not any(call[0] == "read_job_status" for call in api.calls):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    name = api.bodies["job"]["metadata"]["name"]
    assert ("delete_job", (name, "Background")) in api.calls
    assert ("delete_secret", name) in api.calls


async def test_a_retry_deletes_secrets_an_earlier_attempt_left(tmp_path: Path) -> None:
    """Also one whose Job was never created (the worker died in between): by label."""
    api = RecordingApi([{"succeeded": 1}])
    ctx = make_ctx(tmp_path, attempt=2, secrets={"warehouse_token": PLANTED})
    await KubernetesJobExecutor(api, OPTIONS).execute(SECRET_STEP, ctx)
    tag = step_tag("default/p/2026-01-31/Load_EU")
    assert api.calls.index(("delete_secrets", f"{LABEL}={tag}")) < next(
        i for i, call in enumerate(api.calls) if call[0] == "create_secret"
    )


async def test_a_retry_deletes_what_the_earlier_attempt_left(tmp_path: Path) -> None:
    api = RecordingApi([{"succeeded": 1}], earlier=["laminar-load-eu-x-1"])
    await KubernetesJobExecutor(api, OPTIONS).execute(STEP, make_ctx(tmp_path, attempt=2))
    tag = step_tag("default/p/2026-01-31/Load_EU")
    assert api.calls[0] == ("list_jobs", f"{LABEL}={tag}")
    assert api.calls[1] == ("delete_job", ("laminar-load-eu-x-1", "Background"))
    assert api.calls.index(("delete_config_map", "laminar-load-eu-x-1")) < next(
        i for i, call in enumerate(api.calls) if call[0] == "create_job"
    )


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"runner": "kubernetes"}, "needs an 'image'"),
        ({"runner": "kubernetes", "image": "i", "inputs": ["t"]}, "need the local runner"),
        ({"image": "i"}, "only to runner 'kubernetes'"),
        ({"runner": "kubernetes", "image": "i", "resources": {"cpu": "lots"}}, "quantity"),
    ],
)
def test_runner_fields_are_validated(tmp_path: Path, fields: dict[str, Any], phrase: str) -> None:
    (tmp_path / "job.py").write_text("")
    doc = {"name": "p", "steps": [{"id": "s", "type": "python", "script": "job.py", **fields}]}
    with pytest.raises(PipelineValidationError) as info:
        validate_pipeline(doc, source_dir=tmp_path)
    assert any(phrase in str(p) for p in info.value.problems), info.value.problems


async def test_kubernetes_runner_without_a_cluster_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steps.engines.duckdb import DuckDBEngine
    from steps.python_runners import PythonRunners
    from steps.python_script import PythonScriptExecutor

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    engine = DuckDBEngine(None)
    try:
        runners = PythonRunners(PythonScriptExecutor(engine))
        with pytest.raises(StepError) as info:
            await runners.execute(STEP, make_ctx(tmp_path))
    finally:
        engine.close()
    assert info.value.error_type == "KubernetesNotConfigured" and not info.value.retryable
