"""Python steps with `runner: kubernetes`: the script runs as a Kubernetes Job.

The script and the run context travel in a ConfigMap mounted into the pod; the Job has no
retries of its own (Temporal retries the step), a deadline equal to the step's timeout, and a
restricted security context. The executor creates both objects through the `kubernetes` client,
follows the Job, copies the pod's log (secret values masked) to the step log, and deletes the
Job on cancel. Objects are named and labelled after the step's idempotency key (hashed), so an
attempt first deletes what an earlier attempt left behind.

Secret values (`env: {X: {secret: name}}`) never go into the Job's pod spec, where anyone who
may read Jobs or Pods would see them: they go into a Kubernetes Secret of the attempt, which
the container reads through `secretKeyRef`. The Secret is owned by the Job (ownerReferences,
so it goes when the Job does, also after a worker died mid-step) and is deleted as soon as the
attempt ends, succeeded, failed or cancelled.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from schemas.pipeline import PythonStep, SecretRef
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
    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> Any: ...
    def patch_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any]) -> Any: ...
    def delete_namespaced_secret(self, name: str, namespace: str) -> Any: ...
    def delete_collection_namespaced_secret(self, namespace: str, label_selector: str) -> Any: ...
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


class AttemptObjects(NamedTuple):
    """The Kubernetes objects of one attempt."""

    config_map: dict[str, Any]
    """The script and the run context."""
    job: dict[str, Any]
    secret: dict[str, Any] | None
    """The values of the step's secret env variables (None: it has none)."""


def manifests(step: PythonStep, ctx: StepContext, options: KubernetesJobOptions) -> AttemptObjects:
    """The ConfigMap (script + context), the Job and the Secret of one attempt."""
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
    secret_values = {k: ctx.env_value(v) for k, v in step.env.items() if isinstance(v, SecretRef)}
    env: list[dict[str, Any]] = [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": name, "key": k}}}
        if isinstance(v, SecretRef)
        else {"name": k, "value": ctx.env_value(v)}
        for k, v in step.env.items()
    ]
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
    secret = (
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": options.namespace, "labels": labels},
            "type": "Opaque",
            "immutable": True,
            "stringData": secret_values,
        }
        if secret_values
        else None
    )
    return AttemptObjects(config_map, job, secret)


def owned_by(job: dict[str, Any], uid: str) -> dict[str, Any]:
    """The patch that makes an object garbage of the Job once the Job is deleted."""
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"], "uid": uid}
    return {"metadata": {"ownerReferences": [owner]}}


class KubernetesJobExecutor:
    """Runs `runner: kubernetes` python steps through `api` (the kubernetes client)."""

    def __init__(self, api: KubernetesApi, options: KubernetesJobOptions | None = None) -> None:
        self.api = api
        self.options = options or KubernetesJobOptions()

    async def execute(self, step: PythonStep, ctx: StepContext) -> StepResult:
        namespace = self.options.namespace
        tag = step_tag(ctx.idempotency_key)
        await asyncio.to_thread(self._delete_earlier, tag)
        config_map, job, secret = manifests(step, ctx, self.options)
        name = job["metadata"]["name"]
        if secret is not None:  # first: the pod reads it when its container starts
            await asyncio.to_thread(self.api.create_namespaced_secret, namespace, secret)
        try:
            await asyncio.to_thread(self.api.create_namespaced_config_map, namespace, config_map)
            created = await asyncio.to_thread(self.api.create_namespaced_job, namespace, job)
            if secret is not None:
                await asyncio.to_thread(self._own_secret, job, created)
            try:
                succeeded = await self._follow(name, ctx)
            except asyncio.CancelledError:
                await asyncio.to_thread(self._delete, name)
                raise
        finally:
            if secret is not None:  # the attempt is over: its secret values go at once
                await asyncio.to_thread(self._delete_secret, name)
        log_path = ctx.work_dir / LOG_NAME
        await asyncio.to_thread(self._save_log, name, log_path, ctx)
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

    def _save_log(self, name: str, log_path: Path, ctx: StepContext) -> None:
        pods = self.api.list_namespaced_pod(self.options.namespace, f"job-name={name}").items
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            for pod in pods:
                text = self.api.read_namespaced_pod_log(pod.metadata.name, self.options.namespace)
                log.write(ctx.redact(text))  # a script may print its secrets

    def _own_secret(self, job: dict[str, Any], created: Any) -> None:
        """Let the Job own its Secret, so it is collected with the Job even if this worker
        dies before deleting it (the Job's uid exists only once the Job does)."""
        uid = getattr(getattr(created, "metadata", None), "uid", None)
        if uid:
            self.api.patch_namespaced_secret(
                job["metadata"]["name"], self.options.namespace, owned_by(job, uid)
            )

    def _delete_secret(self, name: str) -> None:
        try:
            self.api.delete_namespaced_secret(name, self.options.namespace)
        except Exception as exc:  # gone already (404); the Job's deletion collects it anyway
            if getattr(exc, "status", None) != 404:
                raise

    def _delete(self, name: str) -> None:
        namespace = self.options.namespace
        self.api.delete_namespaced_job(name, namespace, propagation_policy="Background")
        self.api.delete_namespaced_config_map(name, namespace)
        self._delete_secret(name)

    def _delete_earlier(self, tag: str) -> None:
        selector = f"{LABEL}={tag}"
        jobs = self.api.list_namespaced_job(self.options.namespace, selector).items
        for job in jobs:
            self._delete(job.metadata.name)
        # Also a Secret whose Job was never created (the worker died in between).
        self.api.delete_collection_namespaced_secret(
            self.options.namespace, label_selector=selector
        )


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
        target = self._batch if name.endswith("_job") or "_job_" in name else self._core
        return getattr(target, name)
