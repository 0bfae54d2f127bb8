"""The object-store layer against moto's S3 server (the stand-in for S3) and local files:
objects, conditional writes, snapshots, the manifest switch, retention and the lease."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from pipeline_service.storage.checkpoints import MANIFEST, CheckpointStore, Retention
from pipeline_service.storage.lease import Lease, LeaseHeld, LeaseLost
from pipeline_service.storage.snapshot import (
    copy_warehouse_file,
    copy_warehouse_from,
    restore_snapshot,
    take_snapshot,
)
from pipeline_service.storage.store import (
    ObjectNotFound,
    ObjectStorage,
    PreconditionFailed,
    StorageError,
    is_url,
)
from tests.s3_standin import S3StandIn


@pytest.fixture(params=["s3", "file"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStorage:
    if request.param == "s3":
        s3: S3StandIn = request.getfixturevalue("s3")
        return ObjectStorage(f"s3://{s3.new_bucket()}/team/state", s3_endpoint=s3.endpoint)
    return ObjectStorage(f"file://{tmp_path}/store")


def test_urls_and_paths() -> None:
    assert is_url("s3://b/p") and is_url("gs://b/p") and is_url("az://c/p")
    assert is_url("file:///tmp/x") and not is_url("/tmp/x") and not is_url("state")


def test_put_get_list_delete(storage: ObjectStorage) -> None:
    storage.put("a/one", b"1")
    storage.put("a/two", b"22")
    assert storage.get("a/one")[0] == b"1"
    assert [(i.key, i.size) for i in sorted(storage.list("a/"), key=lambda i: i.key)] == [
        ("a/one", 1),
        ("a/two", 2),
    ]
    storage.delete(["a/one", "a/two"])
    assert storage.list("a/") == []
    with pytest.raises(ObjectNotFound):
        storage.get("a/one")


def test_create_only_refuses_an_existing_object(storage: ObjectStorage) -> None:
    storage.put("x", b"1", create_only=True)
    with pytest.raises(PreconditionFailed):
        storage.put("x", b"2", create_only=True)
    assert storage.get("x")[0] == b"1"


def test_compare_and_swap_on_s3(s3: S3StandIn) -> None:
    storage = ObjectStorage(f"s3://{s3.new_bucket()}", s3_endpoint=s3.endpoint)
    first = storage.put("x", b"1")
    assert storage.put("x", b"2", if_match=first)
    with pytest.raises(PreconditionFailed):
        storage.put("x", b"3", if_match=first)  # stale e-tag: someone wrote meanwhile


def test_a_missing_bucket_and_an_unreachable_endpoint_are_clear_errors(s3: S3StandIn) -> None:
    with pytest.raises(StorageError, match=r"cannot write s3://no-such-bucket-here/p/x"):
        ObjectStorage("s3://no-such-bucket-here/p", s3_endpoint=s3.endpoint).put("x", b"1")


def _state_dir(root: Path) -> Path:
    """A state dir as a cluster leaves it: a WAL-mode SQLite database that is open and being
    written, a warehouse, a state file, a work dir, and a secret key that must never leave."""
    root.mkdir(parents=True)
    (root / "laminar-state.json").write_text('{"pipeline": "p"}')
    (root / "work" / "step").mkdir(parents=True)
    (root / "work" / "step" / "out.csv").write_text("a\n1\n")
    (root / "secret.key").write_bytes(b"never upload me")
    (root / "api-key").write_text("lam_the-embedded-api's-key\n")  # cluster_api.API_KEY_FILE
    (root / "temporal.db.pid").write_text("123")
    return root


def test_snapshot_is_consistent_and_leaves_secrets_behind(tmp_path: Path) -> None:
    state = _state_dir(tmp_path / "state")
    writer = sqlite3.connect(state / "temporal.db", check_same_thread=False)
    writer.execute("PRAGMA journal_mode=wal")
    writer.execute("CREATE TABLE history (n INTEGER)")
    writer.commit()
    service = sqlite3.connect(state / "laminar.db")  # the embedded service's database
    service.execute("CREATE TABLE runs (id TEXT)")
    service.execute("INSERT INTO runs VALUES ('r1')")
    service.commit()
    warehouse = duckdb.connect(str(state / "warehouse.duckdb"))
    warehouse.execute("CREATE TABLE out AS SELECT 1 AS n")
    stop = threading.Event()

    def write_history() -> None:  # the server keeps committing while the snapshot is taken
        n = 0
        while not stop.is_set():
            n += 1
            writer.execute("INSERT INTO history VALUES (?)", (n,))
            writer.commit()

    thread = threading.Thread(target=write_history)
    thread.start()
    try:
        time.sleep(0.05)
        snapshot = take_snapshot(state, lambda target: copy_warehouse_from(warehouse, target))
    finally:
        stop.set()
        thread.join()
    try:
        restored = tmp_path / "restored"
        restore_snapshot(snapshot.path, restored)
    finally:
        snapshot.cleanup()
    assert snapshot.databases == ("temporal.db", "laminar.db")
    names = sorted(p.relative_to(restored).as_posix() for p in restored.rglob("*"))
    assert names == [
        "laminar-state.json",
        "laminar.db",
        "temporal.db",
        "warehouse.duckdb",
        "work",
        "work/step",
        "work/step/out.csv",
    ]
    rows = sqlite3.connect(restored / "temporal.db").execute("SELECT count(*), max(n) FROM history")
    count, highest = rows.fetchone()
    assert count == highest and count > 0  # a prefix of the commits, none torn
    assert sqlite3.connect(restored / "laminar.db").execute("SELECT id FROM runs").fetchall() == [
        ("r1",)
    ]
    copy = duckdb.connect(str(restored / "warehouse.duckdb"), read_only=True)
    assert copy.execute("SELECT n FROM out").fetchall() == [(1,)]
    warehouse.close()


def _publish(store: CheckpointStore, tmp_path: Path, marker: str) -> str:
    state = tmp_path / f"state-{marker}"
    state.mkdir()
    (state / "laminar-state.json").write_text(marker)
    db = state / "warehouse.duckdb"
    duckdb.connect(str(db)).close()
    snapshot = take_snapshot(state, copy_warehouse_file(db))
    try:
        return store.publish(snapshot.path, "p", run_id="r", finished_steps=[marker]).id
    finally:
        snapshot.cleanup()


def _restored_marker(store: CheckpointStore, tmp_path: Path, checkpoint_id: str | None) -> str:
    manifest = store.manifest()
    assert manifest is not None
    checkpoint = manifest.find(checkpoint_id) if checkpoint_id else manifest.latest
    assert checkpoint is not None
    archive = tmp_path / "download.tar.gz"
    store.fetch(checkpoint, archive)
    target = tmp_path / f"restored-{checkpoint.id}"
    restore_snapshot(archive, target)
    return (target / "laminar-state.json").read_text()


def test_manifest_switches_after_upload_and_retention_prunes(
    storage: ObjectStorage, tmp_path: Path
) -> None:
    store = CheckpointStore(storage, Retention(max_checkpoints=2))
    ids = [_publish(store, tmp_path, marker) for marker in ("one", "two", "three")]
    manifest = store.manifest()
    assert manifest is not None
    assert [c.id for c in manifest.checkpoints] == ids[1:]
    assert sorted(i.key for i in storage.list("checkpoints/")) == [
        f"checkpoints/{i}.tar.gz" for i in ids[1:]
    ]
    assert _restored_marker(store, tmp_path, None) == "three"
    assert _restored_marker(store, tmp_path, ids[1]) == "two"


def test_a_crash_before_the_manifest_switch_leaves_the_previous_snapshot(
    storage: ObjectStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(storage)
    first = _publish(store, tmp_path, "first")
    real_put = storage.put

    def crash_on_manifest(key: str, data: bytes | Path, **kwargs: object) -> str | None:
        if key == MANIFEST:
            raise StorageError("injected crash before the manifest switch")
        return real_put(key, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "put", crash_on_manifest)
    with pytest.raises(StorageError, match="injected"):
        _publish(store, tmp_path, "second")
    manifest = store.manifest()
    assert manifest is not None and manifest.latest is not None
    assert manifest.latest.id == first
    assert _restored_marker(store, tmp_path, None) == "first"


def test_lease_refuses_a_second_holder_until_it_expires(storage: ObjectStorage) -> None:
    first = Lease(storage, ttl=timedelta(seconds=1))
    first.acquire()
    first.renew()
    second = Lease(storage, ttl=timedelta(seconds=1))
    with pytest.raises(LeaseHeld, match="in use by another laminar run"):
        second.acquire()
    time.sleep(1.1)  # the first holder died without releasing: its lease lapses
    second.acquire()
    with pytest.raises(LeaseLost):
        first.renew()
    second.release()
    Lease(storage).acquire()


@pytest.mark.parametrize("crash_on", ["checkpoints/", MANIFEST])
def test_a_crash_at_any_point_of_an_upload_leaves_the_previous_snapshot(
    s3: S3StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_on: str
) -> None:
    """Injected: the snapshot's own upload fails, or the manifest switch after it does."""
    storage = ObjectStorage(f"s3://{s3.new_bucket()}/p", s3_endpoint=s3.endpoint)
    store = CheckpointStore(storage)
    first = _publish(store, tmp_path, "first")
    real_put = storage.put

    def crash(key: str, data: bytes | Path, **kwargs: object) -> str | None:
        if key.startswith(crash_on):
            raise StorageError(f"injected crash uploading {key}")
        return real_put(key, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "put", crash)
    with pytest.raises(StorageError, match="injected"):
        _publish(store, tmp_path, "second")
    monkeypatch.undo()
    assert _restored_marker(CheckpointStore(storage), tmp_path, None) == "first"
    assert store.manifest().latest.id == first  # type: ignore[union-attr]
    third = _publish(store, tmp_path, "third")  # and the next checkpoint works
    assert _restored_marker(store, tmp_path, third) == "third"


def test_server_side_encryption_comes_from_the_standard_aws_settings(
    s3: S3StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SERVER_SIDE_ENCRYPTION", "AES256")
    bucket = s3.new_bucket()
    ObjectStorage(f"s3://{bucket}/p", s3_endpoint=s3.endpoint).put("x", b"1")
    head = s3.client().head_object(Bucket=bucket, Key="p/x")
    assert head["ServerSideEncryption"] == "AES256"


def test_retention_by_age_keeps_the_latest(tmp_path: Path) -> None:
    storage = ObjectStorage(f"file://{tmp_path}/store")
    store = CheckpointStore(storage, Retention(max_checkpoints=10, max_age=timedelta(seconds=1)))
    old = _publish(store, tmp_path, "old")
    time.sleep(1.1)
    store.retention = Retention(max_checkpoints=10, max_age=timedelta(milliseconds=1))
    new = _publish(store, tmp_path, "new")  # everything is "too old", but the latest stays
    manifest = store.manifest()
    assert manifest is not None
    assert [c.id for c in manifest.checkpoints] == [new]
    assert [i.key for i in storage.list("checkpoints/")] == [f"checkpoints/{new}.tar.gz"]
    assert old != new
