"""Logs of `laminar run`: text or JSON lines, through structlog wired into stdlib logging.

Everything logs through the standard library (temporalio's worker, our modules), and one
structlog `ProcessorFormatter` renders it: `--log-format json` gives one JSON object per line
with `timestamp`, `level`, `logger`, `message` and, where they apply, `tenant`, `pipeline`,
`run_id`, `step_id`, `attempt`. The run's context comes from structlog's contextvars (bound by
the cluster) and from the Temporal SDK's own context (inside an activity or a workflow), so a
worker's "activity failed" record names its step and attempt.

On a terminal with the text format the user sees the rich live table as before; without a
terminal, plain lines (progress.py) or, in JSON, step and run events (`JsonProgressView`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import structlog
from rich.console import Console

from schemas.run import RunState, StepStatus

LogFormat = Literal["text", "json"]
RUN_LOGGER = "laminar.run"
CLUSTER_LOGGER = "laminar.cluster"


def temporal_context(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Turn the Temporal SDK's `temporal_activity` / `temporal_workflow` extras (and, inside an
    activity, its live info) into run_id / step_id / attempt."""
    activity = event.pop("temporal_activity", None)
    workflow = event.pop("temporal_workflow", None)
    if activity is None:
        from temporalio import activity as sdk_activity

        if sdk_activity.in_activity():
            info = sdk_activity.info()
            activity = {
                "workflow_id": info.workflow_id,
                "activity_id": info.activity_id,
                "attempt": info.attempt,
            }
    if isinstance(activity, dict):
        event.setdefault("run_id", activity.get("workflow_id"))
        if activity.get("activity_id"):
            event.setdefault("step_id", str(activity["activity_id"]).split("#")[0])
        if activity.get("attempt") is not None:
            event.setdefault("attempt", activity["attempt"])
    if isinstance(workflow, dict):
        event.setdefault("run_id", workflow.get("workflow_id"))
    return event


def _drop_noise(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in ("color_message", "taskName", "__temporal_error_identifier"):
        event.pop(key, None)
    for key in [k for k, v in event.items() if v is None]:
        del event[key]
    return event


def formatter(fmt: LogFormat, *, plain_tracebacks: bool = False) -> logging.Formatter:
    """Records as text or JSON lines; `plain_tracebacks`: Python's own traceback text in
    text lines (not rich's boxes, which a service's log collector would show as noise)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        temporal_context,
        _drop_noise,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(default=str)
        tail: list[Any] = [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False,
            pad_event_to=0,
            exception_formatter=structlog.dev.plain_traceback
            if plain_tracebacks
            else structlog.dev.default_exception_formatter,
        )
        tail = []
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_noise,
            *tail,
            renderer,
        ],
    )


@contextlib.contextmanager
def cluster_logging(
    state_log: Path,
    fmt: LogFormat,
    level: str = "info",
    log_file: Path | None = None,
) -> Iterator[None]:
    """Send stdlib logging to the state dir's log (and --log-file) while the run lasts.

    Unconfigured, logging would print every failed attempt's traceback on stderr; the step's
    error is in the run's summary, the details stay in these files."""
    handlers: list[logging.Handler] = []
    for path in (state_log, log_file):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(path, encoding="utf-8"))
    configure_structlog()
    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(level.upper())
    for handler in handlers:
        handler.setFormatter(formatter(fmt))
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous_level)


@contextlib.contextmanager
def json_output(console: Console, errors: Console, level: str = "info") -> Iterator[None]:
    """`--log-format json`: everything the command says goes to stdout as JSON lines (the
    consoles' messages, and every log record at `level` or above)."""
    configure_structlog()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter("json"))
    handler.setLevel(level.upper())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = console.file, errors.file
    # A TextIOBase is what rich writes to; typeshed calls the attribute IO[str].
    console.file = LogLines(logging.getLogger(CLUSTER_LOGGER))  # type: ignore[assignment]
    errors.file = LogLines(logging.getLogger(CLUSTER_LOGGER), logging.ERROR)  # type: ignore[assignment]
    try:
        yield
    finally:
        console.file, errors.file = previous
        root.removeHandler(handler)


def configure_structlog() -> None:
    """structlog loggers (ours) hand their events to stdlib logging, rendered as above."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class LogLines(io.TextIOBase):
    """A file for a rich Console that turns each printed line into a log record: in JSON mode
    the cluster's messages ("resuming run ...", "checkpoint ... saved") become JSON lines."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        self._logger, self._level, self._pending = logger, level, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                self._logger.log(self._level, " ".join(line.split()))
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self._logger.log(self._level, " ".join(self._pending.split()))
        self._pending = ""


class JsonProgressView:
    """ProgressView's interface, as log events: one per step change, one for the run's end."""

    def __init__(self) -> None:
        self._log = structlog.get_logger(RUN_LOGGER)
        self._seen: dict[str, tuple[StepStatus, int]] = {}

    def __enter__(self) -> JsonProgressView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def update(self, state: RunState) -> None:
        for step in state.steps:
            key = (step.status, step.attempt)
            if self._seen.get(step.step_id) == key or step.status == StepStatus.PENDING:
                continue
            self._seen[step.step_id] = key
            failed = step.status in (StepStatus.FAILED, StepStatus.RETRYING)
            emit = self._log.warning if failed else self._log.info
            emit(
                f"step {step.step_id} {step.status}",
                run_id=state.run_id,
                step_id=step.step_id,
                attempt=step.attempt,
                status=str(step.status),
                error=step.error,
            )

    def finish(self, summary: RunState) -> None:
        self.update(summary)
        seconds = None
        if summary.started_at and summary.finished_at:
            seconds = round((summary.finished_at - summary.started_at).total_seconds(), 3)
        steps = {
            s.step_id: {
                "status": str(s.status),
                "attempt": s.attempt,
                "outputs": s.result.outputs if s.result else {},
                "tables": s.result.tables if s.result else {},
            }
            for s in summary.steps
        }
        emit = self._log.info if summary.status == "SUCCEEDED" else self._log.error
        emit(
            f"run {summary.status}",
            run_id=summary.run_id,
            status=str(summary.status),
            seconds=seconds,
            error=summary.error,
            steps=steps,
        )
