"""A run's data on the artifact store (`LAMINAR_ARTIFACT_URL`), for workers that share a run.

Step logs: each attempt's part of `step.log` (secrets masked) is uploaded while the attempt runs
and when it ends, so the API shows the tail of a log written on any worker. Hand-off tables:
a step's output tables (python `outputs:`) and the tables a DuckDB `sql` step created or wrote
(`StepResult.written`) are exported as Parquet at the end of a successful attempt, and a
step on a worker whose warehouse lacks them (or holds a same-named table of another run) imports
them before it starts. Keys are built here from the run's tenant, run id, step id and attempt
(never from user input) and always start with the tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from steps.engines.duckdb import DuckDBEngine

log = logging.getLogger(__name__)

LOG_NAME = "step.log"
"""Every executor that writes a log writes it as `step.log` in the step's work directory."""
FINAL_UPLOAD_WAIT = timedelta(seconds=10)
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._\-]+")


class ArtifactStore(Protocol):
    """Blocking object-store calls (the activity runs them in threads)."""

    def put(self, key: str, data: bytes | Path) -> object: ...

    def fetch(self, key: str, target: Path) -> bool:
        """Download `key` to `target`; False if there is no such object."""
        ...


def key_part(text: str) -> str:
    """One path segment from a name (tenant, run id, step id): no `/`, `..` or odd characters."""
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("._") or "_"


def run_prefix(tenant: str, run_id: str) -> str:
    """Everything of one run lives under this prefix (ends with `/`). The run id is made
    readable and suffixed with its hash: two ids that read alike (`key:a b`, `key:a_b`) differ."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:12]
    return f"{key_part(tenant)}/runs/{key_part(run_id)[:200]}-{digest}/"


def log_key(tenant: str, run_id: str, step_id: str, attempt: int) -> str:
    return f"{run_prefix(tenant, run_id)}{key_part(step_id)}/attempt-{int(attempt)}/{LOG_NAME}"


def table_key(tenant: str, run_id: str, step_id: str, table: str) -> str:
    """A table's Parquet file; named by a hash, since a table name may be any DuckDB name."""
    digest = hashlib.sha256(table.encode()).hexdigest()[:32]
    return f"{run_prefix(tenant, run_id)}{key_part(step_id)}/tables/{digest}.parquet"


class AttemptLog:
    """Uploads this attempt's part of the step log: every `interval` while it runs, and at
    the end. Uploads are best effort: a store that refuses never fails the step."""

    def __init__(
        self,
        store: ArtifactStore,
        path: Path,
        key: str,
        redact: Callable[[str], str],
        interval: timedelta,
    ) -> None:
        self._store, self._path, self._key, self._redact = store, path, key, redact
        self._interval = interval.total_seconds()
        # The executors append: what the file holds now belongs to earlier attempts.
        self._start = path.stat().st_size if path.is_file() else 0
        self._sent_size = -1
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(self._periodically())

    async def finish(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # A store that does not answer must not hold the step's end for its retry budget.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._upload(final=True), FINAL_UPLOAD_WAIT.total_seconds())

    async def _periodically(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._upload(final=False)

    async def _upload(self, *, final: bool) -> None:
        try:
            await asyncio.to_thread(self._upload_now, final)
        except Exception as exc:  # an observation only: the step goes on
            log.warning("could not upload the log of this attempt to %s: %s", self._key, exc)

    def _upload_now(self, final: bool) -> None:
        if not self._path.is_file():
            return
        with self._path.open("rb") as file:
            file.seek(self._start)
            data = file.read()
        if not final:
            # A line still being written may hold the start of a secret the mask would miss.
            data = data[: data.rfind(b"\n") + 1]
        if len(data) == self._sent_size and not final:
            return
        masked = self._redact(data.decode("utf-8", errors="replace")).encode()
        self._store.put(self._key, masked)
        self._sent_size = len(data)


class HandoffError(Exception):
    """A hand-off table cannot be exported or imported; the message says which and why."""


@dataclass
class HandoffTables:
    """Hand-off tables through the store, and which run's copy this worker's warehouse holds.

    The warehouse is one DuckDB file per worker and table names are global in it: a table of
    the same name may be another run's. `origins` remembers, per table, the (run, step) whose
    copy is here; unknown after a restart, which only costs an import.
    """

    store: ArtifactStore
    warehouse: DuckDBEngine
    scratch: Path
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)

    async def export(self, tenant: str, run_id: str, step_id: str, tables: list[str]) -> None:
        """Upload a step's output tables (after the step loaded them into the warehouse)."""
        for table in tables:
            path = self._scratch_file(run_id, step_id, table)
            try:
                await self.warehouse.run_export(table, path, "parquet")
                await asyncio.to_thread(
                    self.store.put, table_key(tenant, run_id, step_id, table), path
                )
            except Exception as exc:
                raise HandoffError(
                    f"could not export table {table!r} to the artifact store: {exc}"
                ) from exc
            finally:
                path.unlink(missing_ok=True)
            self.origins[table] = (run_id, step_id)

    async def import_missing(
        self, tenant: str, run_id: str, written: Mapping[str, str]
    ) -> list[str]:
        """Bring in each table (name -> step that wrote it in this run) this warehouse lacks
        or holds from elsewhere; the tables imported. HandoffError if one is not in the store."""
        wanted = {t: s for t, s in written.items() if self.origins.get(t) != (run_id, s)}
        if not wanted:
            return []
        files: dict[str, Path] = {}
        try:
            for table, step_id in sorted(wanted.items()):  # a copy: entries may go
                path = self._scratch_file(run_id, step_id, table)
                found = await asyncio.to_thread(
                    self.store.fetch, table_key(tenant, run_id, step_id, table), path
                )
                if not found and not await self.warehouse.missing_tables([table]):
                    # Not in the store (a step reused from an earlier run, say), but here:
                    # as without a store, the warehouse's copy is used.
                    del wanted[table]
                    continue
                if not found:
                    raise HandoffError(
                        f"table {table!r} (from step '{step_id}') is neither in this worker's "
                        "DuckDB warehouse nor in the artifact store (a step reused from an "
                        "earlier run, or written before LAMINAR_ARTIFACT_URL was set)"
                    )
                files[table] = path
            if files:
                await self.warehouse.run_load(files)
        finally:
            for path in files.values():
                path.unlink(missing_ok=True)
        for table, step_id in wanted.items():
            self.origins[table] = (run_id, step_id)
        return sorted(wanted)

    def _scratch_file(self, run_id: str, step_id: str, table: str) -> Path:
        # Unique per call: two steps on this worker may import the same table at once.
        self.scratch.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(f"{run_id}\0{step_id}\0{table}".encode()).hexdigest()[:16]
        return self.scratch / f"{digest}-{uuid.uuid4().hex[:12]}.parquet"
