"""Where the API reads step log tails: this server's disk, else the artifact store."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from activities.artifacts import log_key, run_prefix
from pipeline_service.db.runs import StepRecord
from pipeline_service.storage.artifacts import ArtifactStorage
from pipeline_service.storage.store import StorageError

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 4096


class StepLogs:
    """The end of each attempt's log: from the file it was written to when this server can
    read it (a shared volume, or one host), else from the artifact store."""

    def __init__(self, work_dir: Path, artifacts: ArtifactStorage | None = None) -> None:
        self.work_dir = work_dir
        self.artifacts = artifacts

    def tails(
        self, tenant: str, run_id: str, rows: Iterable[StepRecord]
    ) -> dict[tuple[str, int], str | None]:
        """(step id, attempt) -> the log's tail, None where there is none."""
        found: dict[tuple[str, int], str | None] = {}
        remote: list[StepRecord] = []
        for row in rows:
            found[(row.step_id, row.attempt)] = tail = _local_tail(row.log_path, self.work_dir)
            if tail is None:
                remote.append(row)
        if remote and self.artifacts is not None:
            found.update(self._stored_tails(tenant, run_id, remote))
        return found

    def _stored_tails(
        self, tenant: str, run_id: str, rows: list[StepRecord]
    ) -> dict[tuple[str, int], str | None]:
        assert self.artifacts is not None
        tails: dict[tuple[str, int], str | None] = {}
        try:
            # One listing of the run's objects, then a ranged read of each log that is there.
            stored = self.artifacts.keys(run_prefix(tenant, run_id))
            for row in rows:
                key = log_key(tenant, run_id, row.step_id, row.attempt)
                if key in stored:
                    data = self.artifacts.tail(key, LOG_TAIL_BYTES)
                    if data is not None:
                        tails[(row.step_id, row.attempt)] = data.decode(errors="replace")
        except StorageError as exc:  # the run's state is still worth answering with
            log.warning("step logs of run %s: %s", run_id, exc)
        return tails


def _local_tail(path: str | None, work_dir: Path) -> str | None:
    """The end of a step's log, if it is a file under the work dir this server can read."""
    if not path:
        return None
    try:
        target = Path(path).resolve()
        if not target.is_relative_to(work_dir.resolve()) or not target.is_file():
            return None
        with target.open("rb") as file:
            file.seek(max(target.stat().st_size - LOG_TAIL_BYTES, 0))
            return file.read().decode(errors="replace")
    except OSError:
        return None
