"""What every step executor implements and receives. No Temporal here: activities adapt."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

from schemas.pipeline import SecretRef, StepBase
from schemas.run import RunContext, StepResult, UpstreamResult
from schemas.templating import render_text

__all__ = ["StepContext", "StepError", "StepExecutor", "StepResult", "step_tag"]

S_contra = TypeVar("S_contra", bound=StepBase, contravariant=True)


class StepError(Exception):
    """A classified step failure. `retryable=False` when retrying cannot help (bad SQL, exit 2)."""

    def __init__(self, message: str, *, error_type: str = "StepError", retryable: bool = True):
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.retryable = retryable


def confined_path(
    source_dir: Path,
    relative: str,
    what: str,
    *,
    must_be_file: bool = True,
    error_type: str = "ScriptPathError",
) -> Path:
    """`relative` resolved inside the pipeline directory (symlinks followed); a path that
    leads outside it, or (with `must_be_file`) is not a file, is a non-retryable StepError."""
    root = source_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise StepError(
            f"{what} {relative!r} resolves outside the pipeline directory {root}",
            error_type=error_type,
            retryable=False,
        )
    if must_be_file and not path.is_file():
        raise StepError(
            f"{what} {relative!r} is not a file in {root}",
            error_type=error_type,
            retryable=False,
        )
    return path


@dataclass(frozen=True)
class StepContext:
    """Everything a step execution may use besides its own definition."""

    run: RunContext
    step_id: str
    attempt: int
    idempotency_key: str
    """Stable across retries of this step in this run: `{run_id}/{step_id}`."""
    source_dir: Path
    """The pipeline's directory; scripts must resolve inside it."""
    work_dir: Path
    """This step's own directory for this run (created by the caller)."""
    heartbeat: Callable[..., None] = lambda *details: None
    upstream: Mapping[str, UpstreamResult] = field(default_factory=dict)
    """Results of the upstream steps this step's templates refer to."""
    secrets: Mapping[str, str] = field(default_factory=dict)
    """Values of the tenant's secrets this step references, by name (resolved by the activity;
    never in the workflow's input or history)."""
    step_started_at: datetime | None = None
    """When the step's first attempt started (from the workflow, the same for every attempt);
    None: count from this attempt's start. A streaming step's `until` counts from it."""
    attempt_deadline: datetime | None = None
    """When Temporal stops waiting for this attempt (its start-to-close timeout): stopping the
    step (a savepoint, a SIGTERM grace) must be over by then. None: no such limit known."""

    def env_value(self, value: str | SecretRef) -> str:
        """A declared variable's value: a rendered template, or a secret's value."""
        if isinstance(value, SecretRef):
            if value.secret not in self.secrets:
                raise StepError(
                    f"secret '{value.secret}' is not set for tenant '{self.run.tenant}' "
                    "(`laminar secrets set` it)",
                    error_type="SecretNotFound",
                    retryable=False,
                )
            return self.secrets[value.secret]
        return render_text(value, self.run, self.upstream)

    def redact(self, text: str) -> str:
        """`text` with every secret value of this step replaced by ***."""
        for secret in sorted(self.secrets.values(), key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text


class StepExecutor(Protocol[S_contra]):
    """One per step type. `execute` is cancelled (asyncio) on timeout, cancel or shutdown."""

    async def execute(self, step: S_contra, ctx: StepContext) -> StepResult: ...


def step_tag(idempotency_key: str) -> str:
    """A stable, shell-safe tag for what a step starts outside Laminar (drivers, jobs, pods):
    the same for every attempt, so an attempt finds what an earlier one left running."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]
