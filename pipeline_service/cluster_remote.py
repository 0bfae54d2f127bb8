"""`laminar run` with its state on an object store (`--state-dir s3://bucket/prefix`, ...).

The run works on a local copy of the state dir, as with a local `--state-dir`. Around it:
- at start, the cluster takes the state's lease (one cluster per remote state), and the latest
  checkpoint (or `--restore-from ID`) is downloaded into the emptied local copy: the bucket,
  not whatever a previous container left on a disk, is the truth;
- while the run goes, finished steps trigger checkpoints (`Checkpointer`, at most one per
  `--checkpoint-interval`), and one more is taken at shutdown;
- the lease is renewed in the background and released at the end. If it is lost (it lapsed
  while it could not be renewed, and another cluster took the state over), the run stops at
  once, as on SIGTERM but with exit code 3 and no further checkpoint: the new holder restored
  the latest checkpoint and continues the run; two clusters must not both drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from pipeline_service.storage.checkpoints import Checkpoint, CheckpointStore, Retention
from pipeline_service.storage.encryption import SnapshotCipher
from pipeline_service.storage.lease import Lease, LeaseHeld, LeaseLost
from pipeline_service.storage.snapshot import (
    WarehouseCopier,
    copy_warehouse_file,
    restore_snapshot,
    take_snapshot,
)
from pipeline_service.storage.store import ObjectStorage, StorageError, describe

if TYPE_CHECKING:
    from rich.console import Console

    from schemas.run import RunState

log = logging.getLogger("laminar.checkpoint")

TEMPORAL_DB = "temporal.db"
WAREHOUSE = "warehouse.duckdb"


class RemoteStateError(Exception):
    """Reported like ClusterError: a message and exit code 2."""


@dataclass
class RemoteOptions:
    url: str
    s3_endpoint: str | None = None
    checkpoint_interval: timedelta = timedelta(seconds=10)
    retention: Retention = field(default_factory=Retention)
    restore_from: str | None = None
    """A checkpoint id; None restores the latest."""
    lease_ttl: timedelta = timedelta(seconds=30)
    lease_wait: timedelta | None = None
    """How long to wait for another holder's lease to lapse (default: one lease_ttl), so a
    container restarted right after its predecessor died waits it out instead of failing."""
    cipher: SnapshotCipher | None = None
    """LAMINAR_CHECKPOINT_KEY: encrypt snapshots client-side (and decrypt them on restore)."""


def local_copy_dir(url: str) -> Path:
    """Where the run's local copy of a remote state lives (one per URL on this machine)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("laminar")) / "remote-state" / digest


def open_checkpoints(
    url: str,
    s3_endpoint: str | None,
    retention: Retention | None = None,
    cipher: SnapshotCipher | None = None,
) -> CheckpointStore:
    try:
        return CheckpointStore(ObjectStorage(url, s3_endpoint=s3_endpoint), retention, cipher)
    except StorageError as exc:
        raise RemoteStateError(str(exc)) from exc


class RemoteState:
    """The remote side of one `laminar run`: lease, restore, checkpoints."""

    def __init__(self, options: RemoteOptions, local_dir: Path, pipeline: str) -> None:
        self.options = options
        self.local_dir = local_dir
        self.pipeline = pipeline
        self.store: CheckpointStore = open_checkpoints(
            options.url, options.s3_endpoint, options.retention, options.cipher
        )
        self.lease = Lease(self.store.storage, ttl=options.lease_ttl)
        self.lease_lost: str | None = None
        self.on_lease_lost: Callable[[str], object] | None = None
        """Called (from the renewing thread) once the lease is lost; the cluster stops."""
        self._renewing = threading.Event()
        self._renewer: threading.Thread | None = None
        self._publish_lock = threading.Lock()
        self.restored: Checkpoint | None = None

    @property
    def where(self) -> str:
        return describe(self.options.url)

    def acquire(self, console: Console | None = None) -> None:
        wait = self.options.lease_wait or self.options.lease_ttl
        deadline = time.monotonic() + wait.total_seconds()
        told = False
        while True:
            try:
                self.lease.acquire()
                break
            except StorageError as exc:
                raise RemoteStateError(str(exc)) from exc
            except LeaseHeld as exc:
                if time.monotonic() >= deadline:
                    raise RemoteStateError(str(exc)) from exc
                if console is not None and not told:
                    console.print(f"waiting: {exc}", markup=False, highlight=False)
                    told = True
                time.sleep(min(1.0, max(0.1, deadline - time.monotonic())))
        self._renewing.set()
        self._renewer = threading.Thread(target=self._renew, name="laminar-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        self._renewing.clear()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self.lease_lost is None:
            with contextlib.suppress(StorageError):
                self.lease.release()

    def _renew(self) -> None:
        """Renew every ttl/3. Taken over: lost. Not renewed for 2/3 of the ttl (the store
        unreachable): lost too, so this cluster stops before its lease can lapse and another
        take over while it still runs steps (it cannot see a takeover it cannot read)."""
        ttl = self.options.lease_ttl.total_seconds()
        every = max(ttl / 3, 0.2)
        renewed = time.monotonic()
        next_at = renewed + every
        while self._renewing.is_set():
            time.sleep(0.1)
            if time.monotonic() < next_at:
                continue
            next_at = time.monotonic() + every
            try:
                self.lease.renew()
                renewed = time.monotonic()
            except LeaseLost as exc:
                self._lost(str(exc))
                return
            except StorageError as exc:  # transient, unless it lasts
                if time.monotonic() - renewed >= ttl * 2 / 3:
                    self._lost(
                        f"not renewed for {time.monotonic() - renewed:.0f}s of its "
                        f"{ttl:.0f}s ttl ({exc})"
                    )
                    return
                log.warning("could not renew the lease on %s: %s", self.where, exc)

    def _lost(self, why: str) -> None:
        if self.lease_lost is not None:
            return
        self.lease_lost = why
        log.error("lease on %s lost: %s; stopping, no more checkpoints", self.where, why)
        if self.on_lease_lost is not None:
            self.on_lease_lost(why)

    def _still_ours(self) -> None:
        """Right before a manifest switch: a cluster that lost the lease must not point the
        manifest at its snapshot (the new holder's checkpoints would be overwritten)."""
        if self.lease_lost is None:
            try:
                self.lease.check()
            except LeaseLost as exc:
                self._lost(str(exc))
        if self.lease_lost is not None:
            raise LeaseLost(self.lease_lost)

    def restore(self, force: bool) -> Checkpoint | None:
        """Empty the local copy and fill it from the chosen checkpoint (none: a fresh state)."""
        try:
            manifest = self.store.manifest()
            if manifest is not None and manifest.pipeline != self.pipeline and not force:
                raise RemoteStateError(
                    f"state {self.where} belongs to pipeline '{manifest.pipeline}', not "
                    f"'{self.pipeline}'. Use another --state-dir, or --force to discard "
                    f"'{manifest.pipeline}''s checkpoints there."
                )
            if force:
                self.store.discard_all()
                manifest = None
            _empty(self.local_dir)
            if self.options.restore_from and manifest is None:
                raise RemoteStateError(f"no checkpoints at {self.where} to restore from")
            if manifest is None:
                return None
            checkpoint = (
                manifest.find(self.options.restore_from)
                if self.options.restore_from
                else manifest.latest
            )
            if checkpoint is None:
                known = ", ".join(c.id for c in manifest.checkpoints) or "none"
                raise RemoteStateError(
                    f"no checkpoint {self.options.restore_from} at {self.where} (there are: "
                    f"{known})"
                )
            with tempfile.TemporaryDirectory(prefix="laminar-download-") as tmp:
                archive = Path(tmp) / "snapshot.tar.gz"
                self.store.fetch(checkpoint, archive)
                restore_snapshot(archive, self.local_dir)
        except StorageError as exc:
            raise RemoteStateError(str(exc)) from exc
        self.restored = checkpoint
        return checkpoint

    def checkpoint(
        self, copy_warehouse: WarehouseCopier, run_id: str | None, finished_steps: list[str]
    ) -> Checkpoint | None:
        """Snapshot the local copy and publish it (blocking: call from a thread)."""
        if self.lease_lost is not None:
            return None  # another cluster owns the state now: never overwrite its manifest
        with self._publish_lock:
            started = time.monotonic()
            snapshot = take_snapshot(self.local_dir, copy_warehouse)
            try:
                checkpoint = self.store.publish(
                    snapshot.path,
                    self.pipeline,
                    run_id=run_id,
                    finished_steps=finished_steps,
                    before_switch=self._still_ours,
                )
            except LeaseLost:
                return None  # the uploaded snapshot is an orphan; the next holder prunes it
            finally:
                snapshot.cleanup()
            log.info(
                "checkpoint %s: %d bytes%s, %d finished steps, %.2fs",
                checkpoint.id,
                checkpoint.size,
                f" ({checkpoint.encryption}, key id {checkpoint.key_id})"
                if checkpoint.encryption
                else "",
                len(finished_steps),
                time.monotonic() - started,
            )
            return checkpoint

    def final_checkpoint(self, run_id: str | None, finished_steps: list[str]) -> Checkpoint | None:
        """At shutdown: the worker and the warehouse are closed, the server is still up."""
        copier = copy_warehouse_file(self.local_dir / WAREHOUSE)
        return self.checkpoint(copier, run_id, finished_steps)


@contextlib.contextmanager
def remote_state(
    options: RemoteOptions | None,
    local_dir: Path,
    pipeline: str,
    force: bool,
    console: Console | None = None,
) -> Iterator[RemoteState | None]:
    """Lease and restore on entry, release on exit; None for a local state dir."""
    if options is None:
        yield None
        return
    remote = RemoteState(options, local_dir, pipeline)
    remote.acquire(console)
    try:
        remote.restore(force)
        yield remote
    finally:
        remote.release()


def _empty(local_dir: Path) -> None:
    from pipeline_service.temporal.dev_server import stop_stale_server

    # A server a crashed run left on the local copy must not see its files replaced.
    stop_stale_server(local_dir / f"{TEMPORAL_DB}.pid", local_dir / TEMPORAL_DB)
    for entry in local_dir.iterdir() if local_dir.exists() else ():
        if entry.name == "laminar.lock":
            continue  # held by this process (state_dir_lock)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def upload_artifacts(
    url: str, s3_endpoint: str | None, state_dir: Path, run_id: str | None
) -> list[str]:
    """LAMINAR_ARTIFACT_URL: the run's logs (Laminar's, and each step's) to `<url>/<run>/`, so
    they outlive a container. Keys uploaded; StorageError if the store refuses."""
    from activities.steps import run_dir_name

    storage = ObjectStorage(url, s3_endpoint=s3_endpoint)
    run_dir = run_dir_name(run_id) if run_id else "no-run"
    files = [state_dir / "logs" / "laminar.log"]
    if run_id:
        files += sorted((state_dir / "work" / run_dir).glob("*/step.log"))
    uploaded = []
    for path in files:
        if path.is_file():
            key = f"{run_dir}/{path.relative_to(state_dir).as_posix()}"
            storage.put(key, path)
            uploaded.append(key)
    return uploaded


class Checkpointer:
    """Checkpoints while the run goes: after steps finish, at most once per interval.

    A step that finishes while an upload is in flight marks the state dirty again, so the
    next checkpoint follows the current one (no completion is left out of the bucket longer
    than one interval plus one upload).
    """

    def __init__(self, remote: RemoteState, console: Console | None = None) -> None:
        self.remote = remote
        self.console = console
        self.run_id: str | None = None
        self.finished: list[str] = []
        self.checkpoints = 0
        self._seen: frozenset[str] = frozenset()
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._copier: WarehouseCopier | None = None

    def start(self, copy_warehouse: WarehouseCopier) -> None:
        self._copier = copy_warehouse
        self._task = asyncio.ensure_future(self._loop())

    def observe(self, state: RunState) -> None:
        """Called with each progress poll; a newly finished step asks for a checkpoint."""
        from schemas.run import STEP_ACTIVE, StepStatus

        self.run_id = state.run_id
        done = frozenset(
            s.step_id
            for s in state.steps
            if s.status not in STEP_ACTIVE and s.status != StepStatus.PENDING
        )
        if done != self._seen:
            self._seen = done
            self.finished = sorted(done)
            self._dirty.set()

    async def stop(self) -> None:
        """Let an upload in flight finish (its snapshot is complete and consistent); no more."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _loop(self) -> None:
        interval = self.remote.options.checkpoint_interval.total_seconds()
        last = -interval
        while True:
            await self._dirty.wait()
            wait = last + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            last = time.monotonic()
            assert self._copier is not None
            job = asyncio.ensure_future(
                asyncio.to_thread(
                    self.remote.checkpoint, self._copier, self.run_id, list(self.finished)
                )
            )
            try:
                await asyncio.shield(job)
                self.checkpoints += 1
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await job  # a half-published checkpoint must not outlive the warehouse
                raise
            except Exception as exc:  # keep running: the next checkpoint may succeed
                log.warning("checkpoint to %s failed: %s", self.remote.where, exc)
                if self.console is not None:
                    self.console.print(f"checkpoint failed: {exc}", markup=False, highlight=False)
