"""Python steps by runner: a local subprocess, or a Kubernetes Job (platform shape)."""

from __future__ import annotations

from collections.abc import Callable

from schemas.pipeline import PythonStep
from steps.base import StepContext, StepError, StepResult
from steps.kubernetes_job import KubernetesJobExecutor, KubernetesJobOptions
from steps.python_script import PythonScriptExecutor


class PythonRunners:
    """Dispatches on `runner`; the Kubernetes client is set up on first use only."""

    def __init__(
        self,
        local: PythonScriptExecutor,
        kubernetes: Callable[[], KubernetesJobExecutor] | None = None,
        *,
        kubernetes_options: KubernetesJobOptions | None = None,
    ) -> None:
        self.local = local
        options = kubernetes_options or KubernetesJobOptions()
        self._make_kubernetes = kubernetes or (lambda: _client_executor(options))
        self._kubernetes: KubernetesJobExecutor | None = None

    async def execute(self, step: PythonStep, ctx: StepContext) -> StepResult:
        if step.runner == "local":
            return await self.local.execute(step, ctx)
        if self._kubernetes is None:
            self._kubernetes = self._make_kubernetes()
        return await self._kubernetes.execute(step, ctx)


def _client_executor(options: KubernetesJobOptions) -> KubernetesJobExecutor:
    from kubernetes.config import ConfigException

    from steps.kubernetes_job import ClientApi

    try:
        return KubernetesJobExecutor(ClientApi(), options)
    except ConfigException as exc:
        raise StepError(
            f"runner 'kubernetes' needs a cluster: no in-cluster or kubeconfig configuration "
            f"({exc})",
            error_type="KubernetesNotConfigured",
            retryable=False,
        ) from exc
