"""`laminar run`: the self-contained pipeline cluster.

One process starts the Temporal dev server (its SQLite file in the state dir), a worker, and
the pipeline's run, shows progress, and stops everything in order. A run interrupted by a
crash or Ctrl-C resumes on the next start: the workflow's history says which steps finished,
and the attempts that died with the old worker are failed at once so they run again.

This module claims the state directory and launches the server without importing the Temporal
SDK; `cluster_run` (which does) is imported while the server boots.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline_service.temporal.dev_server import spawn_dev_server

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline_service.cluster_dates import DataInterval
    from pipeline_service.cluster_remote import RemoteOptions
    from schemas.pipeline import PipelineDefinition

STATE_FILE = "laminar-state.json"
LOCK_FILE = "laminar.lock"
TEMPORAL_DB = "temporal.db"
WAREHOUSE = "warehouse.duckdb"
LAMINAR_LOG = "logs/laminar.log"
OWNED = (STATE_FILE, TEMPORAL_DB, WAREHOUSE, "work", "logs", "flink")
"""What `--force` removes: only files Laminar itself created, never the whole directory."""


class ClusterError(Exception):
    """A problem `laminar run` reports as a message (exit code 2), not a stack trace."""


@dataclass
class ClusterState:
    """The state file: which pipeline owns the directory and which run is current."""

    pipeline: str
    created_at: str
    current_run: str | None = None
    logical_date: str | None = None
    fingerprint: str | None = None
    """Hash of the definition and params the current run started with."""

    @classmethod
    def read(cls, state_dir: Path) -> ClusterState | None:
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ClusterError(f"{path} is not a Laminar state file ({exc}); use --force") from exc

    def write(self, state_dir: Path) -> None:
        tmp = state_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        os.replace(tmp, state_dir / STATE_FILE)


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state dir, or say clearly why it cannot be used (a file, no permission)."""
    if state_dir.exists() and not state_dir.is_dir():
        raise ClusterError(f"state dir {state_dir}: it is a file, not a directory")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / f".laminar-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ClusterError(f"state dir {state_dir}: {exc.strerror or exc}") from None


def claim_state_dir(state_dir: Path, pipeline: str, force: bool) -> ClusterState:
    """Check the directory belongs to this pipeline (or wipe it with --force)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state = ClusterState.read(state_dir) if not force else None
    if state is not None and state.pipeline != pipeline:
        raise ClusterError(
            f"state directory {state_dir} belongs to pipeline '{state.pipeline}', not "
            f"'{pipeline}'. Use another --state-dir, or --force to discard "
            f"'{state.pipeline}''s state there."
        )
    if state is None:
        for name in OWNED:
            target = state_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                for path in state_dir.glob(f"{name}*"):
                    path.unlink()
        state = ClusterState(pipeline=pipeline, created_at=datetime.now(UTC).isoformat())
        state.write(state_dir)
    return state


@contextlib.contextmanager
def state_dir_lock(state_dir: Path) -> Iterator[None]:
    """Only one `laminar run` per state directory at a time."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ClusterError(
                f"state directory {state_dir} is in use by laminar run (pid {holder})"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


@dataclass
class ClusterOptions:
    state_dir: Path
    force: bool = False
    once: bool = True
    parallelism: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    ui: bool = True
    startup_timeout: timedelta = timedelta(seconds=30)
    shutdown_grace: timedelta = timedelta(seconds=5)
    http_port: int | None = None
    """Serve the service API (and record the run in the state dir's database) on this port."""
    metrics_port: int | None = None
    """Serve the API's Prometheus metrics on this port too (needs http_port)."""
    kafka: str | None = None
    """Relay the run's events to this broker (`embedded`: start one); records the run."""
    remote: RemoteOptions | None = None
    log_format: Literal["text", "json"] | None = None
    """None: text (the rich table on a terminal, plain lines elsewhere)."""
    log_level: str = "info"
    log_file: Path | None = None
    artifact_url: str | None = None
    """Where the run's logs are uploaded at shutdown (LAMINAR_ARTIFACT_URL)."""
    s3_endpoint: str | None = None
    interval: DataInterval | None = None
    """A dated run (--logical-date / --latest-interval); None: a manual run dated now."""
    """State on an object store; `state_dir` is then its local working copy."""


def run_cluster(
    pipeline: PipelineDefinition,
    source_dir: Path,
    options: ClusterOptions,
    console: Console | None = None,
) -> int:
    """Claim the state dir, launch the server, run; the exit code of `laminar run`."""
    from pipeline_service.cluster_remote import RemoteStateError, remote_state

    prepare_state_dir(options.state_dir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(state_dir_lock(options.state_dir))
        try:
            remote = stack.enter_context(
                remote_state(
                    options.remote, options.state_dir, pipeline.name, options.force, console
                )
            )
        except RemoteStateError as exc:
            raise ClusterError(str(exc)) from None
        if remote is not None and remote.restored is not None and console is not None:
            console.print(f"restored checkpoint {remote.restored.id} from {remote.where}")
        state = claim_state_dir(options.state_dir, pipeline.name, options.force)
        server = spawn_dev_server(
            options.state_dir / TEMPORAL_DB,
            options.state_dir / "logs" / "temporal.log",
            ui=options.ui,
        )
        finished = False
        checkpointer = None
        cluster = None
        try:
            from pipeline_service.cluster_run import PipelineCluster  # the SDK loads meanwhile

            if remote is not None:
                from pipeline_service.cluster_remote import Checkpointer

                checkpointer = Checkpointer(remote, console)
            cluster = PipelineCluster(pipeline, source_dir, options, console, checkpointer)
            code = asyncio.run(cluster.run(state, server))
            finished = cluster.run_finished
            return code
        finally:
            # The exit code is decided: a signal now must not turn it into another one
            # (closing the event loop gave SIGINT back to Python's KeyboardInterrupt).
            with signals_ignored():
                # Only a cluster that got its run going has anything new to save (a server that
                # failed to start on a damaged database must not push out the good snapshots).
                if remote is not None and cluster is not None and cluster.started:
                    _final_checkpoint(remote, checkpointer, state, console)
                if options.artifact_url:
                    _upload_artifacts(options, state, console)
                if finished:
                    # The run's final state is durable (the server stored it before it told us
                    # the result) and the worker is stopped: skip the server's graceful drain.
                    server.kill()
                else:
                    server.stop()


def _final_checkpoint(remote: Any, checkpointer: Any, state: ClusterState, console: Any) -> None:
    """The shutdown checkpoint (the server still runs; the worker and warehouse are closed)."""
    from pipeline_service.storage.store import StorageError

    finished = checkpointer.finished if checkpointer is not None else []
    try:
        checkpoint = remote.final_checkpoint(state.current_run, finished)
    except (StorageError, OSError) as exc:
        if console is not None:
            console.print(f"checkpoint at shutdown failed: {exc}", markup=False, highlight=False)
        return
    if checkpoint is not None and console is not None:
        console.print(f"checkpoint {checkpoint.id} saved to {remote.where}", highlight=False)


def _upload_artifacts(options: ClusterOptions, state: ClusterState, console: Any) -> None:
    from pipeline_service.cluster_remote import upload_artifacts
    from pipeline_service.storage.store import StorageError, describe

    assert options.artifact_url is not None
    try:
        keys = upload_artifacts(
            options.artifact_url, options.s3_endpoint, options.state_dir, state.current_run
        )
    except (StorageError, OSError) as exc:
        message = f"uploading the run's logs failed: {exc}"
    else:
        message = f"{len(keys)} log file(s) uploaded to {describe(options.artifact_url)}"
    if console is not None:
        console.print(message, markup=False, highlight=False)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
