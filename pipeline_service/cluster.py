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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_service.temporal.dev_server import spawn_dev_server

if TYPE_CHECKING:
    from rich.console import Console

    from schemas.pipeline import PipelineDefinition

STATE_FILE = "laminar-state.json"
LOCK_FILE = "laminar.lock"
TEMPORAL_DB = "temporal.db"
WAREHOUSE = "warehouse.duckdb"
LAMINAR_LOG = "logs/laminar.log"
OWNED = (STATE_FILE, TEMPORAL_DB, WAREHOUSE, "work", "logs")
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


def run_cluster(
    pipeline: PipelineDefinition,
    source_dir: Path,
    options: ClusterOptions,
    console: Console | None = None,
) -> int:
    """Claim the state dir, launch the server, run; the exit code of `laminar run`."""
    with state_dir_lock(options.state_dir):
        state = claim_state_dir(options.state_dir, pipeline.name, options.force)
        server = spawn_dev_server(
            options.state_dir / TEMPORAL_DB,
            options.state_dir / "logs" / "temporal.log",
            ui=options.ui,
        )
        try:
            from pipeline_service.cluster_run import PipelineCluster  # the SDK loads meanwhile

            cluster = PipelineCluster(pipeline, source_dir, options, console)
            return asyncio.run(cluster.run(state, server))
        finally:
            server.stop()
