"""Live progress of a run: a rich table on a terminal, one line per change elsewhere (CI, logs)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from schemas.pipeline import PipelineDefinition
from schemas.run import RunState, RunStatus, StepState, StepStatus

STATUS_STYLE = {
    StepStatus.PENDING: "dim",
    StepStatus.RUNNING: "cyan",
    StepStatus.RETRYING: "yellow",
    StepStatus.SUCCEEDED: "green",
    StepStatus.FAILED: "bold red",
    StepStatus.SKIPPED: "magenta",
    StepStatus.COMPENSATING: "yellow",
    StepStatus.COMPENSATED: "blue",
    StepStatus.COMPENSATION_FAILED: "bold red",
    StepStatus.CANCELLED: "magenta",
}


def _duration(step: StepState) -> str:
    if step.started_at is None:
        return ""
    end = step.finished_at or datetime.now(UTC)
    return f"{max((end - step.started_at).total_seconds(), 0.0):.2f}s"


def _detail(step: StepState) -> str:
    if step.error:
        return step.error.splitlines()[0][:120] if step.error.strip() else step.error
    if step.result is None:
        return ""
    if step.result.rows_affected is not None:
        return f"{step.result.rows_affected} rows"
    return ""


MAX_VALUE_TEXT = 300
"""A result value longer than this is cut in the final summary (a for_each step's list)."""


def render_table(state: RunState) -> Table:
    table = Table(title=f"{state.pipeline}  [{state.status}]", title_justify="left")
    for column in ("step", "type", "status", "attempt", "time", "detail"):
        table.add_column(column)
    for step in state.steps:
        style = STATUS_STYLE.get(step.status, "")
        table.add_row(
            step.step_id,
            step.type,
            f"[{style}]{step.status}[/]",
            str(step.attempt or ""),
            _duration(step),
            _detail(step),
        )
    return table


class ProgressView:
    def __init__(self, console: Console, pipeline: PipelineDefinition | None = None) -> None:
        self.console = console
        self.pipeline = pipeline
        self._live: Live | None = None
        self._seen: dict[str, tuple[StepStatus, int]] = {}

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=8, transient=True)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def update(self, state: RunState) -> None:
        if self._live is not None:
            self._live.update(render_table(state))
            return
        for step in state.steps:
            key = (step.status, step.attempt)
            if self._seen.get(step.step_id) != key and step.status != StepStatus.PENDING:
                self._seen[step.step_id] = key
                attempt = f" (attempt {step.attempt})" if step.attempt > 1 else ""
                detail = _detail(step)
                self.console.print(
                    f"{step.step_id}: {step.status}{attempt}{'  ' + detail if detail else ''}",
                    highlight=False,
                )

    def finish(self, summary: RunState) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
        if summary.steps:
            self.console.print(render_table(summary))
        style = "green" if summary.status == RunStatus.SUCCEEDED else "bold red"
        line = f"[{style}]run {summary.status}[/]"
        if summary.started_at and summary.finished_at:
            line += f" in {(summary.finished_at - summary.started_at).total_seconds():.2f}s"
        if summary.error:
            line += f": {summary.error}"
        self.console.print(line)
        for step in summary.steps:
            if step.step_id.endswith("]"):
                continue  # a for_each instance: its step lists the results
            outputs = step.result.outputs if step.result else {}
            for key, value in outputs.items():
                if key != "statements":
                    text = str(value)
                    text = text if len(text) <= MAX_VALUE_TEXT else text[:MAX_VALUE_TEXT] + "..."
                    self.console.print(f"  {step.step_id}.{key} = {text}", highlight=False)
            for name, table in (step.result.tables if step.result else {}).items():
                self.console.print(
                    f"  {step.step_id} output {name} -> table {table}", highlight=False
                )
