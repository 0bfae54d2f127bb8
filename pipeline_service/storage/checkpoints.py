"""Checkpoints of a state dir on an object store: snapshots under new keys, one manifest.

Layout under the state URL:

    manifest.json                      which snapshot is latest, and the retained ones
    checkpoints/<id>.tar.gz            one snapshot each (see snapshot.py)
    checkpoints/<id>.tar.gz.enc        ... or encrypted client-side (see encryption.py)
    lease.json                         which cluster holds the state (see lease.py)

A snapshot is uploaded under a key never used before and only then does the manifest switch
to it: a crash mid-upload leaves at worst an orphan object, and the manifest still names the
previous, complete snapshot. Orphans and snapshots past retention are deleted after the
manifest no longer names them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline_service.storage.encryption import (
    ALGORITHM,
    KEY_SETTING,
    SnapshotCipher,
    SnapshotDecryptError,
)
from pipeline_service.storage.store import ObjectNotFound, ObjectStorage, StorageError

MANIFEST = "manifest.json"
PREFIX = "checkpoints/"
FORMAT = 1


@dataclass(frozen=True)
class Retention:
    max_checkpoints: int = 5
    max_age: timedelta | None = None
    """Older snapshots go, but never the latest one."""


@dataclass
class Checkpoint:
    id: str
    key: str
    created_at: str
    size: int
    run_id: str | None = None
    finished_steps: list[str] = field(default_factory=list)
    encryption: str | None = None
    """None: stored as it is (the store's server-side encryption may apply); "AES-256-GCM":
    encrypted by Laminar with the key named by `key_id`."""
    key_id: str | None = None


@dataclass
class Manifest:
    pipeline: str
    checkpoints: list[Checkpoint] = field(default_factory=list)
    """Oldest first; the last one is the latest."""
    format: int = FORMAT

    @property
    def latest(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    def find(self, checkpoint_id: str) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.id == checkpoint_id), None)

    def to_json(self) -> bytes:
        document = {
            "format": self.format,
            "pipeline": self.pipeline,
            "latest": self.latest.id if self.latest else None,
            "checkpoints": [asdict(c) for c in self.checkpoints],
        }
        return json.dumps(document, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        document = json.loads(data)
        if document.get("format") != FORMAT:
            raise ValueError(f"unknown manifest format {document.get('format')!r}")
        return cls(
            pipeline=str(document["pipeline"]),
            checkpoints=[Checkpoint(**c) for c in document.get("checkpoints", [])],
        )


def new_checkpoint_id(now: datetime | None = None) -> str:
    """Sortable by time, unique across clusters: `20261124T134501.123Z-9f3a1c`."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S')}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


class CheckpointStore:
    def __init__(
        self,
        storage: ObjectStorage,
        retention: Retention | None = None,
        cipher: SnapshotCipher | None = None,
    ) -> None:
        self.storage = storage
        self.retention = retention or Retention()
        self.cipher = cipher
        """Set: new snapshots are encrypted client-side, and encrypted ones can be restored."""

    def manifest(self) -> Manifest | None:
        try:
            data, _ = self.storage.get(MANIFEST)
        except ObjectNotFound:
            return None
        try:
            return Manifest.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                f"{self.storage.url}/{MANIFEST} is not a Laminar checkpoint manifest ({exc}); "
                "use --force to start afresh there"
            ) from exc

    def publish(
        self,
        archive: Path,
        pipeline: str,
        *,
        run_id: str | None = None,
        finished_steps: list[str] | None = None,
        before_switch: Callable[[], None] | None = None,
    ) -> Checkpoint:
        """Upload a snapshot under a new key, then switch the manifest to it, then prune.
        `before_switch` may raise to leave the manifest as it is (the lease was lost)."""
        checkpoint_id = new_checkpoint_id()
        key = f"{PREFIX}{checkpoint_id}.tar.gz"
        upload = archive
        if self.cipher is not None:
            key += ".enc"
            upload = archive.with_name(archive.name + ".enc")
            self.cipher.encrypt_file(archive, upload)
        try:
            self.storage.put(key, upload, create_only=False)
            size = upload.stat().st_size
        finally:
            if upload != archive:
                upload.unlink(missing_ok=True)
        checkpoint = Checkpoint(
            id=checkpoint_id,
            key=key,
            created_at=datetime.now(UTC).isoformat(),
            size=size,
            run_id=run_id,
            finished_steps=sorted(finished_steps or []),
            encryption=ALGORITHM if self.cipher is not None else None,
            key_id=self.cipher.key_id if self.cipher is not None else None,
        )
        if before_switch is not None:
            before_switch()
        manifest = self.manifest() or Manifest(pipeline=pipeline)
        manifest.pipeline = pipeline
        manifest.checkpoints.append(checkpoint)
        manifest.checkpoints = self._retained(manifest.checkpoints)
        self.storage.put(MANIFEST, manifest.to_json())  # the switch
        self._delete_unlisted(manifest)
        return checkpoint

    def fetch(self, checkpoint: Checkpoint, target: Path) -> None:
        """Download a snapshot to `target`, decrypted if it was encrypted."""
        sealed = target
        if checkpoint.encryption is not None:
            self._check_key(checkpoint)
            sealed = target.with_name(target.name + ".enc")
        try:
            self.storage.download(checkpoint.key, sealed)
        except ObjectNotFound as exc:
            raise StorageError(
                f"checkpoint {checkpoint.id} is in the manifest but its snapshot is gone "
                f"({exc}); --restore-from another one (`laminar checkpoint list`)"
            ) from exc
        if sealed != target:
            assert self.cipher is not None
            try:
                self.cipher.decrypt_file(sealed, target, f"checkpoint {checkpoint.id}")
            finally:
                sealed.unlink(missing_ok=True)

    def _check_key(self, checkpoint: Checkpoint) -> None:
        """Refuse before downloading: no key, another key, or an unknown algorithm."""
        what = f"checkpoint {checkpoint.id} is encrypted ({checkpoint.encryption}"
        if checkpoint.encryption != ALGORITHM:
            raise SnapshotDecryptError(f"{what}), which this Laminar cannot decrypt")
        if self.cipher is None:
            raise SnapshotDecryptError(
                f"{what}, key id {checkpoint.key_id}): set {KEY_SETTING} to the key it was "
                "written with"
            )
        if checkpoint.key_id is not None and checkpoint.key_id != self.cipher.key_id:
            raise SnapshotDecryptError(
                f"{what}) with key id {checkpoint.key_id}, but {KEY_SETTING} is key id "
                f"{self.cipher.key_id}: set it to the key the checkpoint was written with"
            )

    def discard_all(self) -> None:
        """--force: forget every checkpoint here (the manifest first, so none is half-gone)."""
        self.storage.delete([MANIFEST])
        self.storage.delete(info.key for info in self.storage.list(PREFIX))

    def _retained(self, checkpoints: list[Checkpoint]) -> list[Checkpoint]:
        kept = checkpoints[-max(1, self.retention.max_checkpoints) :]
        if self.retention.max_age is not None:
            oldest = datetime.now(UTC) - self.retention.max_age
            latest = kept[-1]
            kept = [c for c in kept if datetime.fromisoformat(c.created_at) >= oldest]
            kept = kept if latest in kept else [*kept, latest]
        return kept

    def _delete_unlisted(self, manifest: Manifest) -> None:
        """Snapshots pruned by retention, and orphans of crashed uploads. Orphans younger than
        an hour may be another cluster's upload in flight (before its lease expired): kept."""
        listed = {c.key for c in manifest.checkpoints}
        recent = datetime.now(UTC) - timedelta(hours=1)
        pruned: set[str] = set()
        for info in self.storage.list(PREFIX):
            key = info.key
            if key in listed:
                continue
            # Our own pruned snapshots are old by definition of retention; a young unlisted
            # object is an orphan of an upload that crashed moments ago, or one in flight.
            if info.last_modified < recent or _is_older_than_latest(key, manifest):
                pruned.add(key)
        self.storage.delete(sorted(pruned))


def _is_older_than_latest(key: str, manifest: Manifest) -> bool:
    latest = manifest.latest
    return latest is not None and Path(key).name < Path(latest.key).name
