"""Streaming Flink jobs: where a job starts from, and the watch that follows it while it runs.

A streaming step keeps running while its job does. The watch heartbeats the job's state and
its latest completed checkpoint, and records that checkpoint in the step's work dir. It ends
when the job reaches a final state or the step's `until` has passed. A job that FAILED fails
the attempt; the step's retry policy then starts another, which restarts the job from the
newest checkpoint or savepoint of the earlier ones (`find_restore_point`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from pipeline_service.storage.store import ObjectStorage, StorageError
from schemas.pipeline import FlinkStep
from steps.base import StepContext, StepError
from steps.flink_rest import TERMINAL, FlinkRest, FlinkRestError, vertex_progress

RESTORE_NAME = "flink-restore.json"
UNTIL = "UNTIL"
"""What `watch_job` returns when the step's `until` passed while the job still ran."""
UNREACHABLE_LIMIT = 60.0
"""Seconds the watch tolerates a REST API that does not answer before the attempt fails."""


@dataclass(frozen=True)
class RestorePoint:
    """A completed checkpoint or savepoint a job can start from."""

    path: str
    kind: str
    """`checkpoint` or `savepoint`."""
    taken_at: float
    """Milliseconds since the epoch (Flink's `latest_ack_timestamp`)."""
    job_id: str | None = None
    checkpoint_id: int | None = None

    def describe(self) -> str:
        of = f" {self.checkpoint_id}" if self.checkpoint_id is not None else ""
        job = f" of job {self.job_id}" if self.job_id else ""
        return f"{self.kind}{of}{job} at {self.path}"


def points_of(job_id: str, stats: dict[str, Any]) -> list[RestorePoint]:
    """The job's latest completed checkpoint and savepoint, where they were written out."""
    latest = stats.get("latest") or {}
    points = []
    for key in ("completed", "savepoint"):
        entry = latest.get(key) or {}
        path = str(entry.get("external_path") or "")
        if not path or path.startswith("<"):  # `<checkpoint-not-externalized>`: in memory
            continue
        kind = "savepoint" if entry.get("is_savepoint") or key == "savepoint" else "checkpoint"
        taken_at = float(entry.get("latest_ack_timestamp") or entry.get("trigger_timestamp") or 0)
        points.append(RestorePoint(path, kind, taken_at, job_id, entry.get("id")))
    return points


def record_point(work_dir: Path, point: RestorePoint) -> None:
    """Keep the newest restore point where the step's next attempt looks first."""
    path = work_dir / RESTORE_NAME
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(asdict(point)) + "\n")
    os.replace(scratch, path)


def recorded_point(work_dir: Path) -> RestorePoint | None:
    try:
        return RestorePoint(**json.loads((work_dir / RESTORE_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None


_SAVED = re.compile(r"(?:^|/)(savepoint-[^/]+|chk-(\d+))/_metadata$")
_JOB_DIR = re.compile(r"(?:^|/)([0-9a-f]{32})/chk-\d+/_metadata$")


def newest_saved_point(directory: str, s3_endpoint: str | None = None) -> RestorePoint | None:
    """The newest savepoint or retained checkpoint under `directory` (Flink's layout:
    `savepoint-*/_metadata`, `<job id>/chk-N/_metadata` under `checkpoints/`), or `directory`
    itself when it is a savepoint. Listed through the object store (`s3://`, `gs://`, `az://`,
    ... or a local path); a `_metadata` file is written last, so each one found is complete.
    Raises StorageError when the store cannot be listed."""
    local = directory.removeprefix("file://")
    is_local = "://" not in local
    if is_local and not Path(local).is_dir():
        return None  # nothing saved yet (and listing a local path would create it)
    store = ObjectStorage(local if is_local else directory, s3_endpoint=s3_endpoint)
    base = local if is_local else directory
    found: list[RestorePoint] = []
    for entry in store.list():
        taken_at = entry.last_modified.timestamp() * 1000
        if entry.key == "_metadata":
            found.append(RestorePoint(base.rstrip("/") or "/", "savepoint", taken_at))
            continue
        match = _SAVED.search(entry.key)
        if match is None:
            continue
        where = f"{base.rstrip('/')}/{entry.key.removesuffix('/_metadata')}"
        if match[2] is None:
            found.append(RestorePoint(where, "savepoint", taken_at))
        else:
            job = _JOB_DIR.search(entry.key)
            point = RestorePoint(
                where, "checkpoint", taken_at, job[1] if job else None, int(match[2])
            )
            found.append(point)
    return max(found, key=lambda p: p.taken_at, default=None)


async def find_restore_point(
    rest: FlinkRest,
    step: FlinkStep,
    work_dir: Path,
    earlier_jobs: list[str],
    s3_endpoint: str | None = None,
) -> RestorePoint | None:
    """The newest of: the earlier attempts' latest checkpoints and savepoints (as the cluster
    reports them), the one recorded in the work dir, the newest saved under `savepoint_path`
    (listed: that is how a new run of the step finds what the previous run left)."""
    points: list[RestorePoint] = []
    for job_id in earlier_jobs:
        points.extend(points_of(job_id, await rest.checkpoints(job_id)))
    if (recorded := recorded_point(work_dir)) is not None:
        points.append(recorded)
    if step.savepoint_path:
        try:
            saved = await asyncio.to_thread(newest_saved_point, step.savepoint_path, s3_endpoint)
        except StorageError as exc:
            raise StepError(
                f"savepoint_path: cannot look for the newest savepoint or checkpoint ({exc}); "
                "the job is not started without the state it may have left there",
                error_type="FlinkSavepointPathUnreadable",
            ) from exc
        if saved is not None:
            points.append(saved)
    return max(points, key=lambda p: p.taken_at, default=None)


def watch_details(job: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Heartbeat details of a running streaming job: state, progress, checkpoints."""
    details = vertex_progress(job)
    latest = stats.get("latest") or {}
    completed = latest.get("completed") or {}
    if completed:
        details["checkpoint"] = completed.get("id")
        moment = completed.get("latest_ack_timestamp")
        if moment:
            details["checkpoint_at"] = datetime.fromtimestamp(moment / 1000, UTC).isoformat()
    counts = stats.get("counts") or {}
    if counts:
        details["checkpoints_completed"] = counts.get("completed", 0)
        details["checkpoints_failed"] = counts.get("failed", 0)
    restored = latest.get("restored") or {}
    if restored.get("external_path"):
        details["restored_from"] = restored["external_path"]
    return details


async def watch_job(
    rest: FlinkRest,
    job_id: str,
    ctx: StepContext,
    work_dir: Path,
    *,
    until: float | None,
    poll: float,
) -> tuple[str, RestorePoint | None]:
    """Follow a running job until it reaches a final state (returned) or `until` seconds
    passed (`UNTIL`), recording each new checkpoint; also returns the newest one seen."""
    loop = asyncio.get_running_loop()
    end = None if until is None else loop.time() + until
    latest: RestorePoint | None = None
    unreachable_since: float | None = None
    while True:
        try:
            job = await rest.job(job_id)
            stats = await rest.checkpoints(job_id)
        except (FlinkRestError, httpx.HTTPError):
            # A busy JobManager may not answer for a while: the job itself runs on.
            unreachable_since = unreachable_since or loop.time()
            if loop.time() - unreachable_since > UNREACHABLE_LIMIT:
                raise
            await asyncio.sleep(poll)
            continue
        unreachable_since = None
        newest = max(points_of(job_id, stats), key=lambda p: p.taken_at, default=None)
        if newest is not None and newest != latest:
            record_point(work_dir, newest)
            latest = newest
        ctx.heartbeat(watch_details(job, stats))
        state = str(job.get("state"))
        if state in TERMINAL:
            return state, latest
        if end is not None and loop.time() >= end:
            return UNTIL, latest
        await asyncio.sleep(poll)
