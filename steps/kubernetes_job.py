"""Python steps with `runner: kubernetes`: the script runs as a Kubernetes Job.

The script and the run context travel in a ConfigMap mounted into the pod; the Job has no
retries of its own (Temporal retries the step), a deadline equal to the step's timeout, and a
restricted security context. The executor creates both objects through the `kubernetes` client,
follows the Job, copies the pod's log to the step log, and deletes the Job on cancel. Objects
are named and labelled after the step's idempotency key (hashed), so an attempt first deletes
what an earlier attempt left behind.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from schemas.pipeline import PythonStep
from schemas.templating import render_text
from steps.base import StepContext, StepError, StepResult, step_tag
from steps.python_script import resolve_script

LABEL = "laminar.dev/step"
LOG_NAME = "step.log"
MOUNT = "/laminar"
SCRATCH = "/scratch"  # an emptyDir: the root filesystem is read-only
_UNSAFE = re.compile(r"[^a-z0-9-]+")


class KubernetesJobOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = "default"
    service_account: str | None = None
    poll_interval: float = 2.0
    ttl_after_finished: int = 3600


class KubernetesApi(Protocol):
    """The calls the executor makes (the `kubernetes` client's, by the same names)."""

    def create_namespaced_config_map(self, namespace: str, body: dict[str, Any]) -> Any: ...
    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any: ...
    def read_namespaced_job_status(self, name: str, namespace: str) -> Any: ...
    def list_namespaced_job(self, namespace: str, label_selector: str) -> Any: ...
    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str) -> Any: ...
    def delete_namespaced_config_map(self, name: str, namespace: str) -> Any: ...
    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any: ...
    def read_namespaced_pod_log(self, name: str, namespace: str) -> str: ...


def object_name(step_id: str, tag: str, attempt: int) -> str:
    step = _UNSAFE.sub("-", step_id.lower()).strip("-")[:30] or "step"
    return f"laminar-{step}-{tag[:12]}-{attempt}"


def manifests(
    step: PythonStep, ctx: StepContext, options: KubernetesJobOptions
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ConfigMap (script + context) and the Job of one attempt."""
    assert step.image is not None
    tag = step_tag(ctx.idempotency_key)
    name = object_name(ctx.step_id, tag, ctx.attempt)
    labels = {LABEL: tag, "app.kubernetes.io/managed-by": "laminar"}
    script = resolve_script(ctx.source_dir, render_text(step.script, ctx.run, ctx.upstream))
    context = {
        "tenant": ctx.run.tenant,
        "run_id": ctx.run.run_id,
        "pipeline": ctx.run.pipeline,
        "step_id": ctx.step_id,
        "attempt": ctx.attempt,
        "idempotency_key": ctx.idempotency_key,
        "logical_date": ctx.run.logical_date.isoformat(),
        "params": ctx.run.params,
        "inputs": {},
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels},
        "data": {"script.py": script.read_text(), "context.json": json.dumps(context)},
    }
    env = [{"name": k, "value": ctx.env_value(v)} for k, v in step.env.items()]
    env += [
        {"name": "LAMINAR_CONTEXT", "value": f"{MOUNT}/context.json"},
        {"name": "LAMINAR_OUTPUT_DIR", "value": SCRATCH},
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    resources = {"cpu": step.resources.cpu, "memory": step.resources.memory}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "step",
                "image": step.image,
                "command": ["python", f"{MOUNT}/script.py"],
                "args": [render_text(arg, ctx.run, ctx.upstream) for arg in step.args],
                "env": env,
                "resources": {"requests": resources, "limits": resources},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "laminar", "mountPath": MOUNT, "readOnly": True},
                    {"name": "scratch", "mountPath": SCRATCH},
                ],
            }
        ],
        "volumes": [
            {"name": "laminar", "configMap": {"name": name}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    if options.service_account:
        pod_spec["serviceAccountName"] = options.service_account
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,  # retries are the step's retry policy, not the Job's
            "activeDeadlineSeconds": int(step.timeout.total_seconds()),
            "ttlSecondsAfterFinished": options.ttl_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    return config_map, job


class KubernetesJobExecutor:
    """Runs `runner: kubernetes` python steps through `api` (the kubernetes client)."""

    def __init__(self, api: KubernetesApi, options: KubernetesJobOptions | None = None) -> None:
        self.api = api
        self.options = options or KubernetesJobOptions()

    async def execute(self, step: PythonStep, ctx: StepContext) -> StepResult:
        namespace = self.options.namespace
        tag = step_tag(ctx.idempotency_key)
        await asyncio.to_thread(self._delete_earlier, tag)
        config_map, job = manifests(step, ctx, self.options)
        name = job["metadata"]["name"]
        await asyncio.to_thread(self.api.create_namespaced_config_map, namespace, config_map)
        await asyncio.to_thread(self.api.create_namespaced_job, namespace, job)
        try:
            succeeded = await self._follow(name, ctx)
        except asyncio.CancelledError:
            await asyncio.to_thread(self._delete, name)
            raise
        log_path = ctx.work_dir / LOG_NAME
        await asyncio.to_thread(self._save_log, name, log_path)
        if not succeeded:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            detail = f": {tail[-1]}" if tail else ""
            raise StepError(
                f"Kubernetes Job {namespace}/{name} failed{detail}\n(pod log: {log_path})",
                error_type="KubernetesJobFailed",
                retryable=True,
            )
        return StepResult(outputs={"job": f"{namespace}/{name}"}, log_path=str(log_path))

    async def _follow(self, name: str, ctx: StepContext) -> bool:
        while True:
            status = (await asyncio.to_thread(self._status, name)) or {}
            ctx.heartbeat({"job": name, **status})
            if status.get("succeeded"):
                return True
            if status.get("failed"):
                return False
            await asyncio.sleep(self.options.poll_interval)

    def _status(self, name: str) -> dict[str, int]:
        job = self.api.read_namespaced_job_status(name, self.options.namespace)
        status = job.status
        return {key: int(getattr(status, key) or 0) for key in ("active", "succeeded", "failed")}

    def _save_log(self, name: str, log_path: Path) -> None:
        pods = self.api.list_namespaced_pod(self.options.namespace, f"job-name={name}").items
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            for pod in pods:
                log.write(
                    self.api.read_namespaced_pod_log(pod.metadata.name, self.options.namespace)
                )

    def _delete(self, name: str) -> None:
        namespace = self.options.namespace
        self.api.delete_namespaced_job(name, namespace, propagation_policy="Background")
        self.api.delete_namespaced_config_map(name, namespace)

    def _delete_earlier(self, tag: str) -> None:
        jobs = self.api.list_namespaced_job(self.options.namespace, f"{LABEL}={tag}").items
        for job in jobs:
            self._delete(job.metadata.name)


class ClientApi:
    """The real API: `kubernetes` client objects, configured in-cluster or from kubeconfig."""

    def __init__(self) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        self._batch = client.BatchV1Api()
        self._core = client.CoreV1Api()

    def __getattr__(self, name: str) -> Any:
        target = self._batch if "job" in name else self._core
        return getattr(target, name)
